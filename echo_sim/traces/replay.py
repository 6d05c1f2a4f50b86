"""Exact greedy replay of a trace (TRACES.md "Replay semantics"), one request at a time.

The rule, shared by every shape: at position t a step accepts a draft tokens, commits
min(a + 1, L - t) tokens (the +1 is the bonus) and moves to t + a + 1. Prefill commits y0, so
decoding starts at t = 1. Only the acceptance rule differs:

- chain of k drafts: a = min(spine_run[t], k)  (replayed from the spine, not the lattice);
- static tree of N tokens: the top-(N-1) lattice nodes by cumulative score (trees.top_b, the
  project's tie-break), a = accepted depth of that selection (trees.accepted_nodes).

All requests advance together (one vectorised gather per step), which is what makes replaying
every k and N of a whole trace cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from echo_sim.policies.calibration import score_bins
from echo_sim.traces.format import TraceSet
from echo_sim.trees import accepted_nodes, top_b

# Cumulative-score bin edges of the calibration table (finer near 0, where most nodes are).
DEFAULT_CALIBRATION_EDGES = (0.0, 0.001, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


@dataclass(frozen=True)
class Replay:
    """The steps of one replay, request-major and in step order within a request.

    Shape (R requests, S steps in all):
        step_offsets int64 [R+1]  steps of request r: step_offsets[r] : step_offsets[r+1]
        position     int64 [S]    position t (within its request) where the step starts
        accepted     int64 [S]    accepted draft tokens a (what real speculative decoding reports)
        committed    int64 [S]    tokens the step commits: a + 1 (bonus), capped at the output's end
    """

    step_offsets: np.ndarray
    position: np.ndarray
    accepted: np.ndarray
    committed: np.ndarray

    @property
    def steps(self) -> np.ndarray:
        """int64 [R]: verification steps per request."""
        return np.diff(self.step_offsets)

    @property
    def committed_per_request(self) -> np.ndarray:
        """int64 [R]: decode tokens committed per request."""
        totals = np.zeros(len(self.step_offsets) - 1, dtype=np.int64)
        np.add.at(totals, np.repeat(np.arange(len(totals)), self.steps), self.committed)
        return totals

    @property
    def tau(self) -> float:
        """Mean accepted tokens per verification, bonus included: Σ committed ÷ Σ steps."""
        return float(self.committed.sum() / len(self.committed)) if len(self.committed) else float("nan")

    def request(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """(position, accepted) of request r's steps, for step-by-step comparisons."""
        part = slice(self.step_offsets[r], self.step_offsets[r + 1])
        return self.position[part], self.accepted[part]


AcceptRule = Callable[[np.ndarray], np.ndarray]  # global positions [B] -> accepted depths [B]


def _walk(trace: TraceSet, accept: AcceptRule, start: int, cap_at_end: bool) -> Replay:
    """Advance every request from `start` until it reaches its output length."""
    lengths = trace.output_len.astype(np.int64)
    here = np.full(trace.num_requests, start, dtype=np.int64)
    active = np.flatnonzero(here < lengths)
    steps = []  # (rows, positions, accepted, committed) per round
    while len(active):
        t = here[active]
        accepted = accept(trace.position_offsets[active] + t).astype(np.int64)
        committed = accepted + 1
        if cap_at_end:  # nothing past the output: the bonus (or, for uncapped imports, more) is cut
            accepted = np.minimum(accepted, lengths[active] - t)
            committed = np.minimum(committed, lengths[active] - t)
        steps.append((active, t, accepted, committed))
        here[active] = t + committed
        active = active[here[active] < lengths[active]]
    if not steps:
        empty = np.zeros(0, dtype=np.int64)
        return Replay(np.zeros(trace.num_requests + 1, dtype=np.int64), empty, empty, empty)
    row, position, accepted, committed = (np.concatenate(parts) for parts in zip(*steps))
    order = np.lexsort((position, row))
    step_offsets = np.zeros(trace.num_requests + 1, dtype=np.int64)
    np.cumsum(np.bincount(row, minlength=trace.num_requests), out=step_offsets[1:])
    return Replay(step_offsets, position[order], accepted[order], committed[order])


def replay_chain(trace: TraceSet, k: int | None, *, start: int = 1, cap_at_end: bool = True) -> Replay:
    """Greedy chains of k drafts (k=None: uncapped) replayed from the spine.

    `start` and `cap_at_end` exist only to reproduce published conventions (SpecDecode-Bench
    counts its prefill as a step at t = 0 and does not cap its last step at the output's end);
    the simulator's semantics are the defaults.
    """
    if k is not None and k < 0:
        raise ValueError(f"chain length k must be >= 0, got {k}")
    spine = trace.spine_run.astype(np.int64)
    if k is None:
        return _walk(trace, lambda g: spine[g], start, cap_at_end)
    return _walk(trace, lambda g: np.minimum(spine[g], k), start, cap_at_end)


def static_selection(batch, budget: int) -> np.ndarray:
    """bool [n]: per lattice the `budget` best nodes by cumulative score (trees.top_b per lattice)."""
    selected = np.zeros(batch.num_nodes, dtype=bool)
    for lo, hi in zip(batch.offsets[:-1], batch.offsets[1:]):
        part = slice(lo, hi)
        eligible = np.ones(hi - lo, dtype=bool)
        selected[part] = top_b(batch.score[part], batch.score[part], batch.depth[part], eligible, budget)
    return selected


def replay_static(trace: TraceSet, n_tokens: int) -> Replay:
    """Static trees of N verified tokens (root + top-(N-1) lattice nodes) replayed through the lattices."""
    if trace.is_chain_only:
        raise ValueError(f"{trace.source_label}: chain-only trace has no lattices; static trees need them")
    if n_tokens < 1:
        raise ValueError(f"static tree size N must be >= 1, got {n_tokens}")

    def accept(global_positions: np.ndarray) -> np.ndarray:
        batch = trace.lattice_batch(global_positions)
        _, depth = accepted_nodes(batch, static_selection(batch, n_tokens - 1))
        return depth

    return _walk(trace, accept, start=1, cap_at_end=True)


@dataclass(frozen=True)
class CalibrationBin:
    """Lattice nodes whose cumulative score lies in [low, high) (the last bin includes 1.0)."""

    low: float
    high: float
    nodes: int
    on_path: int
    mean_score: float | None
    on_path_rate: float | None  # None for an empty bin


def calibration_table(trace: TraceSet, edges=DEFAULT_CALIBRATION_EDGES) -> list[CalibrationBin]:
    """Cumulative-score bins vs the fraction of the bin's nodes that are on-path (all lattice nodes)."""
    edges = np.asarray(edges, dtype=np.float64)
    if len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError(f"calibration bin edges must be increasing, got {edges.tolist()}")
    score = trace.node_score.astype(np.float64)
    inside = (score >= edges[0]) & (score <= edges[-1])
    which = score_bins(score[inside], edges)
    nodes = np.bincount(which, minlength=len(edges) - 1)
    on_path = np.bincount(which, weights=trace.node_on_path[inside], minlength=len(edges) - 1)
    score_sum = np.bincount(which, weights=score[inside], minlength=len(edges) - 1)
    return [
        CalibrationBin(
            low=float(edges[i]), high=float(edges[i + 1]), nodes=int(nodes[i]), on_path=int(on_path[i]),
            mean_score=float(score_sum[i] / nodes[i]) if nodes[i] else None,
            on_path_rate=float(on_path[i] / nodes[i]) if nodes[i] else None,
        )
        for i in range(len(edges) - 1)
    ]
