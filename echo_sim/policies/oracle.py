"""`oracle`: verify exactly the on-path nodes of every lattice (no waste).

A per-step ceiling: at every position no policy accepts more. It is not a global optimum
(accepting less at one step can land on a better position later), so compare policies to it per
step. The only policy allowed to read `lattices.on_path`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from echo_sim.policies.base import TRACE_LIMIT, DraftShape, Selection, StepContext
from echo_sim.policies.common import fitted_selection, require_confidences
from echo_sim.policies.knobs import KnobbedPolicy
from echo_sim.trees import LatticeBatch


@dataclass
class OraclePolicy(KnobbedPolicy):
    name: ClassVar[str] = "oracle"
    note: ClassVar[str] = "oracle knows the target's output: a ceiling, not a deployable configuration"
    needs_future: ClassVar[bool] = True
    draft: DraftShape = field(init=False, default=DraftShape(depth=TRACE_LIMIT, width=TRACE_LIMIT))

    def select(self, lattices: LatticeBatch, context: StepContext) -> Selection:
        require_confidences(self.name, lattices)
        nodes = lattices.on_path.astype(bool, copy=True)
        drafts = int(nodes.sum())
        return fitted_selection(context.cost, nodes, lattices.batch_size, drafts, budget=drafts)
