"""`echo`: elastic, budgeted super-tree with sparse confidence gating (POLICIES.md).

One step, top to bottom (every part has an off switch for ablations):

0. shape       before drafting: the next step's width k', depth S' or no drafting, the best
               predicted committed tokens per second (shape.py: online per-(k', level) ĉ profiles,
               draft + verify + prefill-chunk time, hysteresis, the full shape ungated every
               `probe` steps), decided every SHAPE_EVERY steps (and after a step without drafting).
               shape=off: always the lattice's full k, S (S_max caps S).
1. calibrate   ĉ = curve(score), the online on-path rate (calibration.py, forgetting `decay` of
               its counts per step); non-increasing along every path by construction (a monotone
               curve of a score that never increases along a path); calibration=off: ĉ = raw score.
2. gate        on ĉ, threshold τ (`tau`, SGLang's --speculative-echo-threshold):
               expand (default)  a frontier node with ĉ < min(τ, ĉ_cut) is not expanded: its children
                                 are never drafted (not eligible). ĉ_cut follows the cost objective: the
                                 smallest ĉ the previous step's budget verified when it left eligible
                                 nodes out, else 0 (children never beat their parent's ĉ, so below
                                 ĉ_cut they would not be verified; at low load, where verification is
                                 memory-bound, the budget takes everything and nothing is pruned).
                                 τ caps the threshold: a node with ĉ >= τ is always expanded.
                                 The draft is ragged and charged per level
                                 by the nodes expanded (the level's tokens padded to the smallest
                                 captured graph bucket, one graph replay per level);
               select            every node is drafted; nodes with ĉ < τ (and their subtrees) are
                                 not verified;
               off               every drafted node is eligible.
               Probe steps run ungated, so the curve keeps learning below τ.
3. budget      goodput: B* = argmax_B (bs + Σ_top-B ĉ) / (T_draft + T_verify(bucket(bs + B)) + T_prefill)
               (policies.budget; T_verify already holds launch and scheduler overheads; T_prefill is
               the step's prefill chunk, prefill_term=off drops it), the smallest B within `tie`
               (0.5 %) of the best rate: a flat optimum's neighbours are ties, the cheaper step wins;
               fixed: B = bs·(N − 1).
4. top-B       trees.supertree_select: the best B eligible nodes of the whole batch by ĉ (ties:
               score desc, depth asc, request asc, node asc), prefix-closed per request.
5. bucketing   V = bs + selected is rounded up to its captured bucket with the next-best eligible
               nodes, the rest `padding`; above the largest bucket: eager. Off: V as is.

Today's knobs map as: gate=on (raw score) -> gate=select (on ĉ); gate_on=conditional is gone (a
raw conditional probability is not on the calibrated scale); adaptive_depth=off -> shape=off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np

from echo_sim.policies.base import TRACE_LIMIT, DraftShape, Outcome, Selection, StepContext
from echo_sim.policies.budget import goodput_budget
from echo_sim.policies.calibration import CalibrationCurve
from echo_sim.policies.common import require_confidences
from echo_sim.policies.knobs import KnobbedPolicy, check_range
from echo_sim.policies.shape import ShapeChooser
from echo_sim.trees import ROOT_PARENT, LatticeBatch, supertree_gate, supertree_select

SHAPE_EVERY = 8  # steps between shape decisions (and profile updates): shapes change with load, slowly


def drafter_frontier(lattices: LatticeBatch, context: StepContext) -> np.ndarray:
    """bool [n]: the nodes the drafter expanded (the engine's, else: nodes with children)."""
    if context.frontier is not None:
        return context.frontier
    has_child = np.zeros(lattices.num_nodes, dtype=bool)
    parent = lattices.global_parent()
    has_child[parent[parent != ROOT_PARENT]] = True
    return has_child


def level_tokens(lattices: LatticeBatch, expanded: np.ndarray, depth: int, cost) -> tuple[int, ...]:
    """Tokens of each draft forward of a ragged draft: level 1 runs the roots, level l + 1 the
    frontier nodes expanded at level l, padded as the cost model's graph rule pads a forward; ends at the first
    level where nothing is expanded."""
    bs = lattices.batch_size
    counts = np.bincount(lattices.depth.compress(expanded), minlength=depth + 1)[1:depth]  # compress: no mask index
    tokens = [bs]
    for count in counts.tolist():
        if count == 0:
            break
        tokens.append(int(cost.executed_one(int(count), bs)[0]))
    return tuple(tokens)


def verify_cut(confidence: np.ndarray, selected: np.ndarray, eligible: np.ndarray) -> float:
    """ĉ_cut: the smallest ĉ verified when the budget left an eligible node out (the largest
    eligible ĉ when it verified none), 0 when every eligible node was verified. `selected` is a
    subset of `eligible` (what top-B picks from), so "some eligible node left out" is a count."""
    if np.count_nonzero(selected) == np.count_nonzero(eligible):
        return 0.0
    chosen = np.flatnonzero(selected)
    return float(confidence.take(chosen).min() if len(chosen) else confidence[eligible].max())


@dataclass
class EchoPolicy(KnobbedPolicy):
    """Elastic, gated, calibrated, budgeted super-tree selection (steps in the module docstring)."""

    name: ClassVar[str] = "echo"
    note: ClassVar[str] = (
        "SGLang's ECHO (PR #33295) exposes only --speculative-echo-threshold, here on the calibrated "
        "scale ĉ (the probability a node is on-path), not on raw draft scores, and as the expand gate's "
        "ceiling (it prunes below min(τ, the budget's cut)); the elastic shape, the expand gate's cut, "
        "calibration and its decay, the goodput budget with its prefill term, bucketing and probing are "
        "this toolkit's reading and have no flags (num-steps/topk give the largest shape)"
    )
    tau: float = 0.2
    gate: Literal["expand", "select", "off"] = "expand"
    calibration: bool = True
    prior: float = 10.0
    decay: float = 0.002
    budget: Literal["goodput", "fixed"] = "goodput"
    N: int = 16
    tie: float = 0.005
    bucketing: bool = True
    shape: bool = True
    hysteresis: float = 0.03
    probe: int = 32
    prefill_term: bool = True
    S_max: int = 0
    draft: DraftShape = field(init=False)
    curve: CalibrationCurve = field(init=False, repr=False)
    chooser: ShapeChooser | None = field(init=False, default=None, repr=False)
    trace_shape: DraftShape | None = field(init=False, default=None, repr=False)
    steps: int = field(init=False, default=0, repr=False)
    cut: float = field(init=False, default=0.0, repr=False)  # ĉ_cut of the expand gate (docstring step 2)
    _budget_shapes: dict = field(init=False, default_factory=dict, repr=False)  # budget.candidate_shapes

    def __post_init__(self) -> None:
        check_range(self.name, "tau", self.tau, 0.0, 1.0)
        check_range(self.name, "prior", self.prior, 1e-9)
        check_range(self.name, "decay", self.decay, 0.0, 0.5)
        check_range(self.name, "N", self.N, 1)
        check_range(self.name, "tie", self.tie, 0.0, 0.5)
        check_range(self.name, "hysteresis", self.hysteresis, 0.0)
        check_range(self.name, "probe", self.probe, 0)
        check_range(self.name, "S_max", self.S_max, 0)
        self.curve = CalibrationCurve(prior_weight=self.prior, decay=self.decay)
        self.draft = DraftShape(depth=self.S_max or TRACE_LIMIT, width=TRACE_LIMIT)

    @property
    def probing(self) -> bool:
        """This step drafts the full shape ungated (shape statistics and calibration below τ)."""
        return self.shape and self.probe > 0 and self.steps % self.probe == 0

    def select(self, lattices: LatticeBatch, context: StepContext) -> Selection:
        require_confidences(self.name, lattices)
        full = DraftShape(min(self.S_max or context.trace_depth, context.trace_depth), context.trace_width)
        if self.chooser is None:
            self.trace_shape = full
            self.chooser = ShapeChooser(full.width, full.depth, prefill_term=self.prefill_term,
                                        hysteresis=self.hysteresis)
        probing = self.probing
        confidence = self._confidence(lattices)
        eligible, levels = self._gate(lattices, confidence, context, probing)
        deciding = self.shape and self.steps % SHAPE_EVERY == 0
        if deciding or (self.shape and probing):
            self.chooser.observe(lattices, np.where(eligible, confidence, 0.0), context.draft)
        candidates = np.flatnonzero(eligible)
        eligible_confidence = confidence.take(candidates)
        budget = self._budget(eligible_confidence, lattices.batch_size, context, levels)
        fill, padding, eager = self._fit_bucket(budget, len(candidates), lattices.batch_size, context)
        nodes = supertree_select(lattices, confidence, confidence, -np.inf, fill, eligible=eligible,
                                 candidates=(candidates, eligible_confidence))
        self.cut = verify_cut(confidence, nodes, eligible)
        self.steps += 1
        if not self.shape or deciding or self.probing or probing or context.draft.depth == 0:
            self.draft = self._next_shape(lattices.batch_size, context, full)
        # a width-1 shape is verified as a 1-wide tree of lattice nodes (the k'=1 beam read), as
        # the runtime drafts and verifies it
        return Selection(nodes=nodes, padding=padding, eager=eager, budget=budget, draft_level_tokens=levels)

    def observe(self, outcome: Outcome) -> None:
        if not self.calibration:
            return
        verified = np.flatnonzero(outcome.selection.nodes)
        self.curve.observe(outcome.lattices.score.take(verified), outcome.accepted.take(verified))

    def _confidence(self, lattices: LatticeBatch) -> np.ndarray:
        """float64 [n]: ĉ, non-increasing along every path: the curve is non-decreasing in the
        score (isotonic) and a cumulative score never increases along a path (a float32 product
        by a probability <= 1 cannot round up), so no running minimum is needed."""
        if not self.calibration:
            return lattices.score.astype(np.float64)
        return self.curve(lattices.score, lattices.score_segments)

    def _gate(self, lattices: LatticeBatch, confidence: np.ndarray, context: StepContext, probing: bool
              ) -> tuple[np.ndarray, tuple[int, ...] | None]:
        """(eligible bool [n], ragged draft level tokens or None) for this step's gate mode."""
        if self.gate == "off" or probing or lattices.num_nodes == 0:
            return np.ones(lattices.num_nodes, dtype=bool), None
        if self.gate == "select":
            return supertree_gate(lattices, confidence, self.tau), None
        expanded = self.drafter_expands(lattices, drafter_frontier(lattices, context), confidence)
        # ĉ never increases along a path, so a node's ancestors were all expanded iff its parent was
        drafted = np.append(expanded, True).take(lattices.parent_slot())  # a root's parent: drafted
        return drafted, level_tokens(lattices, expanded, context.draft.depth, context.cost)

    def drafter_expands(self, lattices: LatticeBatch, frontier: np.ndarray,
                        confidence: np.ndarray | None = None) -> np.ndarray:
        """bool [n]: the `frontier` nodes the drafter expands this step: gate=expand keeps those
        with ĉ >= min(τ, ĉ_cut) (docstring step 2), probe steps and the other gates all of them.
        The one expand rule: _gate applies it to the simulator's beam frontier, the runtime's
        drafter to each level it grows (before select: ĉ changes only in observe, so both see the
        same curve)."""
        if self.gate != "expand" or self.probing:
            return frontier
        confidence = self._confidence(lattices) if confidence is None else confidence
        return frontier & (confidence >= min(self.tau, self.cut))

    def _budget(self, eligible_confidence: np.ndarray, bs: int, context: StepContext, levels) -> int:
        if self.budget == "fixed":
            return bs * (self.N - 1)
        drafted = context.draft
        kv_tokens = int(np.sum(context.kv_lens))
        if levels is not None:
            draft_seconds = context.cost.ragged_draft_time(bs, levels, kv_tokens)
        else:
            draft_seconds = (context.cost.draft_time(bs, drafted.depth, drafted.width, kv_tokens=kv_tokens)
                             if drafted.depth else 0.0)
        sunk = draft_seconds + (context.prefill_seconds if self.prefill_term else 0.0)
        return goodput_budget(eligible_confidence, bs, kv_tokens, sunk, context.cost, self.bucketing,
                              self._budget_shapes, self.tie)

    def _fit_bucket(self, budget: int, eligible: int, bs: int, context: StepContext) -> tuple[int, int, bool]:
        """(nodes to select, padding tokens, eager) for this budget and bucketing mode."""
        drafts = min(budget, eligible)
        executed, eager = context.cost.executed_one(bs + drafts, bs, self.bucketing)
        if not self.bucketing or eager:
            return drafts, 0, bool(eager)
        capacity = int(executed) - bs
        fill = min(capacity, eligible)
        return fill, capacity - fill, False

    def _next_shape(self, batch_size: int, context: StepContext, full: DraftShape) -> DraftShape:
        """The shape the next step drafts (step 0): full when probing or shape=off."""
        if not self.shape or self.probing or batch_size == 0:
            return full
        rates = self.chooser.rates(batch_size, int(np.sum(context.kv_lens)), context.prefill_seconds,
                                   context.cost, self.bucketing)
        return self.chooser.choose(rates)

    def sglang_flags(self) -> dict[str, object]:
        flags: dict[str, object] = {}
        if self.trace_shape is not None:
            flags["--speculative-num-steps"] = self.trace_shape.depth
            flags["--speculative-eagle-topk"] = self.trace_shape.width
        if self.budget == "fixed":
            flags["--speculative-num-draft-tokens"] = self.N
        flags["--speculative-echo-threshold"] = self.tau if self.gate != "off" else 0.0  # 0 gates nothing
        return flags
