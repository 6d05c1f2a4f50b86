"""`echo`: the batch as one budgeted super-tree with sparse confidence gating (POLICIES.md).

One step, top to bottom (every part has an off switch for ablations):

1. gate        a node is eligible when its gate value (cumulative score, or its own conditional
               probability with gate_on=conditional) is >= τ for it and every ancestor.
2. calibrate   ĉ = curve(score), the online on-path rate (calibration.py), forced non-increasing
               along every path by trees.running_min where it is not already; off: ĉ = raw score.
3. budget      fixed: B = bs·(N − 1), the same token count as `static`.
               goodput: B* = argmax_B (bs + Σ_top-B ĉ) / (T_draft + T_verify(bs + B)) over the
               eligible nodes, T from the cost model at the step's KV and with V padded to the graph
               bucket it would run in (eager above the largest); the top ĉ come from a partial
               selection of a bounded window, widened only while a bound says a larger B could win.
4. top-B       trees.supertree_select ranks all eligible nodes of all requests by ĉ (ties: score
               desc, depth asc, request asc, node asc) and keeps the best B: prefix-closed because
               ĉ never increases along a path.
5. bucketing   V = bs + selected is rounded up to its captured bucket by taking the next-best
               eligible nodes; if too few remain the rest is `padding`; above the largest bucket
               the step runs eagerly. Off: V as is (eager unless it equals a bucket).
6. depth       next S = min(S_max, 1 + deepest selected depth over the last 4 steps); off: S_max.
               S_max = 0 means the trace's depth.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from echo_sim.policies.base import TRACE_LIMIT, DraftShape, Outcome, Selection, StepContext
from echo_sim.policies.calibration import CalibrationCurve
from echo_sim.policies.budget import goodput_budget
from echo_sim.policies.common import executed_shape, require_confidences
from echo_sim.policies.knobs import KnobbedPolicy, check_range
from echo_sim.trees import ROOT_PARENT, LatticeBatch, running_min, supertree_gate, supertree_select

DEPTH_WINDOW = 4  # steps of selected depth that the next draft depth looks back on


def parent_links(lattices: LatticeBatch, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(child, parent) flat indices of the masked nodes that are not children of the root.

    Shape: both int64 [number of such nodes]. Gathering only the masked nodes keeps the step's
    monotonicity checks as small as the gated set.
    """
    child = np.flatnonzero(mask & (lattices.parent != ROOT_PARENT))
    request = np.searchsorted(lattices.offsets, child, side="right") - 1
    return child, lattices.parent[child] + lattices.offsets[request]


@dataclass
class EchoPolicy(KnobbedPolicy):
    """Gated, calibrated, budgeted super-tree selection (steps in the module docstring)."""

    name: ClassVar[str] = "echo"
    note: ClassVar[str] = (
        "SGLang's ECHO (PR #33295) exposes only --speculative-echo-threshold; gate_on, calibration, "
        "the goodput budget, bucketing and adaptive depth are this toolkit's reading, not flags"
    )
    tau: float = 0.2
    gate: bool = True
    gate_on: Literal["cumulative", "conditional"] = "cumulative"
    calibration: bool = True
    prior: float = 10.0
    budget: Literal["goodput", "fixed"] = "goodput"
    N: int = 16
    bucketing: bool = True
    adaptive_depth: bool = True
    S_max: int = 0
    draft: DraftShape = field(init=False)
    curve: CalibrationCurve = field(init=False, repr=False)
    recent_depths: deque = field(init=False, repr=False)
    trace_shape: DraftShape | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        check_range(self.name, "tau", self.tau, 0.0, 1.0)
        check_range(self.name, "prior", self.prior, 1e-9)
        check_range(self.name, "N", self.N, 1)
        check_range(self.name, "S_max", self.S_max, 0)
        self.curve = CalibrationCurve(prior_weight=self.prior)
        self.recent_depths = deque(maxlen=DEPTH_WINDOW)
        self.draft = DraftShape(depth=self.S_max or TRACE_LIMIT, width=TRACE_LIMIT)

    def select(self, lattices: LatticeBatch, context: StepContext) -> Selection:
        require_confidences(self.name, lattices)
        self.trace_shape = DraftShape(context.trace_depth, context.trace_width)
        gate_value, threshold = self._gate(lattices)
        eligible = supertree_gate(lattices, gate_value, threshold)
        confidence = self._confidence(lattices, eligible)
        child, parent = parent_links(lattices, eligible)
        # ĉ must not increase along a path; running_min forces it where the curve did not already.
        if not np.all(confidence[child] <= confidence[parent]):
            confidence = running_min(lattices, confidence)
        budget = self._budget(confidence[eligible], lattices.batch_size, context)
        fill, padding, eager = self._fit_bucket(budget, int(eligible.sum()), lattices.batch_size, context)
        nodes = supertree_select(lattices, confidence, gate_value, threshold, fill, eligible=eligible)
        self._plan_depth(lattices, nodes)
        return Selection(nodes=nodes, padding=padding, eager=eager, budget=budget)

    def observe(self, outcome: Outcome) -> None:
        if self.calibration:
            verified = outcome.selection.nodes
            self.curve.observe(outcome.lattices.score[verified], outcome.accepted[verified])

    def _gate(self, lattices: LatticeBatch) -> tuple[np.ndarray, float]:
        if not self.gate:
            return lattices.score, -np.inf
        return (lattices.score if self.gate_on == "cumulative" else lattices.cond_prob), self.tau

    def _confidence(self, lattices: LatticeBatch, eligible: np.ndarray) -> np.ndarray:
        """float64 [n]: ĉ on eligible nodes (0 elsewhere: they are never selected)."""
        if not self.calibration:
            return lattices.score.astype(np.float64)
        confidence = np.zeros(lattices.num_nodes)
        confidence[eligible] = self.curve(lattices.score[eligible])
        return confidence

    def _budget(self, eligible_confidence: np.ndarray, bs: int, context: StepContext) -> int:
        if self.budget == "fixed":
            return bs * (self.N - 1)
        drafted = context.draft
        kv_tokens = int(np.sum(context.kv_lens))
        draft_seconds = (context.cost.draft_time(bs, drafted.depth, drafted.width, kv_tokens=kv_tokens)
                         if drafted.depth else 0.0)
        return goodput_budget(eligible_confidence, bs, kv_tokens, draft_seconds, context.cost, self.bucketing)

    def _fit_bucket(self, budget: int, eligible: int, bs: int, context: StepContext) -> tuple[int, int, bool]:
        """(nodes to select, padding tokens, eager) for this budget and bucketing mode."""
        drafts = min(budget, eligible)
        executed, eager = executed_shape(context.cost.graph_buckets, np.array([bs + drafts]), self.bucketing)
        if not self.bucketing or eager[0]:
            return drafts, 0, bool(eager[0])
        capacity = int(executed[0]) - bs
        fill = min(capacity, eligible)
        return fill, capacity - fill, False

    def _plan_depth(self, lattices: LatticeBatch, nodes: np.ndarray) -> None:
        s_max = self.S_max or self.trace_shape.depth
        self.recent_depths.append(int(lattices.depth[nodes].max()) if nodes.any() else 0)
        depth = min(s_max, 1 + max(self.recent_depths)) if self.adaptive_depth else s_max
        self.draft = DraftShape(depth=depth, width=self.trace_shape.width)

    def sglang_flags(self) -> dict[str, object]:
        flags: dict[str, object] = {}
        if self.trace_shape is not None:
            flags["--speculative-num-steps"] = self.S_max or self.trace_shape.depth
            flags["--speculative-eagle-topk"] = self.trace_shape.width
        if self.budget == "fixed":
            flags["--speculative-num-draft-tokens"] = self.N
        flags["--speculative-echo-threshold"] = self.tau if self.gate else 0.0  # 0 gates nothing
        return flags
