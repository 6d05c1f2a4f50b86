"""`dynamic`: threshold trees (EAGLE-2-style confidence thresholds, DySpec, OPT-Tree).

Per request, every lattice node whose cumulative score is >= τ, capped at the N_max best by
score (tie-break score desc, depth asc, node asc). Cumulative scores never increase along a path,
so the set is prefix-closed. Each request gets its own tree size, so the verify shape is ragged:
every step pays eager launches (the "kernel incompatibility" cost of dynamic trees).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from echo_sim.policies.base import TRACE_LIMIT, DraftShape, Selection, StepContext
from echo_sim.policies.common import per_request_top, require_confidences
from echo_sim.policies.knobs import KnobbedPolicy, check_range
from echo_sim.trees import LatticeBatch


@dataclass
class DynamicPolicy(KnobbedPolicy):
    """Every node with score >= tau, at most n_max per request; the whole trace lattice drafted."""

    name: ClassVar[str] = "dynamic"
    note: ClassVar[str] = "threshold-based dynamic trees are not an SGLang option"
    tau: float = 0.05
    n_max: int = 64
    draft: DraftShape = field(init=False, default=DraftShape(depth=TRACE_LIMIT, width=TRACE_LIMIT))

    def __post_init__(self) -> None:
        check_range(self.name, "tau", self.tau, 0.0, 1.0)
        check_range(self.name, "n_max", self.n_max, 1)

    def select(self, lattices: LatticeBatch, context: StepContext) -> Selection:
        require_confidences(self.name, lattices)
        quota = np.full(lattices.batch_size, self.n_max, dtype=np.int64)
        nodes = per_request_top(lattices, quota, eligible=lattices.score >= self.tau)
        return Selection(nodes=nodes, eager=True, budget=int(nodes.sum()))
