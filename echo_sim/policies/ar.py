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
    # its selection depends on the batch size and the node count alone: remembered per (bs, n) for
    # the cost model it was fitted to (the nodes mask shared read-only), not rebuilt every step
    _selections: dict = field(init=False, default_factory=dict, repr=False, compare=False)
    _selections_cost: object = field(init=False, default=None, repr=False, compare=False)

    def select(self, lattices: LatticeBatch, context: StepContext) -> Selection:
        if context.cost is not self._selections_cost:
            self._selections_cost, self._selections = context.cost, {}
        key = (lattices.batch_size, lattices.num_nodes)
        if key not in self._selections:
            nodes = np.zeros(lattices.num_nodes, dtype=bool)
            nodes.flags.writeable = False
            self._selections[key] = fitted_selection(context.cost, nodes, lattices.batch_size, 0, budget=0)
        return self._selections[key]
