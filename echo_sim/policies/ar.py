"""`ar`: the autoregressive baseline. Verifies only the roots (V = bs), drafts nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from echo_sim.policies.base import DraftShape, Selection, StepContext
from echo_sim.policies.common import fitted_selection
from echo_sim.policies.knobs import KnobbedPolicy
from echo_sim.trees import LatticeBatch


@dataclass
class ArPolicy(KnobbedPolicy):
    name: ClassVar[str] = "ar"
    note: ClassVar[str] = "no speculation: launch SGLang without --speculative-algorithm"
    draft: DraftShape = field(init=False, default=DraftShape(depth=0, width=1))

    def select(self, lattices: LatticeBatch, context: StepContext) -> Selection:
        nodes = np.zeros(lattices.num_nodes, dtype=bool)
        return fitted_selection(context.cost, nodes, lattices.batch_size, 0, budget=0)
