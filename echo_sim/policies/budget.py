"""echo's verification budget: how many draft nodes the batch verifies this step (POLICIES.md step 3).

B* maximises expected committed tokens per second of step time, given the calibrated confidence ĉ
of every eligible node: a node's ĉ is the probability it is accepted, so the top-B nodes by ĉ add
Σ top-B ĉ expected tokens to the bs bonus tokens, and the step costs the draft plus the verify
forward of bs + B tokens (padded to its graph bucket when bucketing).
"""

from __future__ import annotations

import numpy as np

from echo_sim.policies.common import step_seconds


def top_values(values: np.ndarray, count: int) -> np.ndarray:
    """float [count]: the `count` largest values, descending (partial selection, then a small sort)."""
    if count < len(values):
        values = np.partition(values, len(values) - count)[len(values) - count :]
    return np.sort(values)[::-1]


def goodput_budget(confidence: np.ndarray, batch_size: int, kv_tokens: int, draft_seconds: float,
                   cost, bucketing: bool) -> int:
    """B* = argmax_B (bs + Σ_top-B ĉ) / T_step(bs + B) over the eligible nodes' ĉ (ties: smaller B).

    With bucketing, a candidate B pays for (and is filled up to) its graph bucket, so B* is a
    bucket's draft capacity. Only a window of the top values is sorted (partial selection). The
    window starts at max(16·bs, largest bucket) and doubles while some B beyond it could still win:
    its gain is at most the window's gain plus the window's smallest ĉ per extra node, its time at
    least the graph-replay verify time (exact when T grows with V and eager costs >= graph).
    """
    eligible = len(confidence)
    largest = int(max(cost.graph_buckets, default=0))
    window = min(eligible, max(16 * batch_size, largest))
    while True:
        values = top_values(confidence, window)
        gains = np.concatenate(([0.0], np.cumsum(values)))
        budgets = np.arange(window + 1)
        executed, eager = cost.executed_shape(batch_size + budgets, batch_size, bucketing)
        if bucketing:  # every B of one executed shape has the same rate: rate each shape once
            budgets = _first_of_runs(executed)
            executed, eager = executed[budgets], eager[budgets]
        filled = np.minimum(executed - batch_size, window)
        seconds = step_seconds(cost, executed, eager, batch_size, kv_tokens) + draft_seconds
        rates = (batch_size + gains[filled]) / seconds
        best = int(np.argmax(rates))
        if window == eligible or not _beyond_may_win(values, gains[-1], rates[best], batch_size, kv_tokens,
                                                     draft_seconds, cost, eligible):
            return int(executed[best] - batch_size) if bucketing else int(budgets[best])
        window = min(eligible, 2 * window)


def _first_of_runs(values: np.ndarray) -> np.ndarray:
    """int [runs]: the index of the first element of each run of equal values. The executed shape
    never decreases with B, so its runs are its distinct shapes, and the first best rate over all B
    (np.argmax) is the first best over the runs' first elements."""
    return np.flatnonzero(np.concatenate(([True], values[1:] != values[:-1])))


def _beyond_may_win(values, window_gain, best_rate, batch_size, kv_tokens, draft_seconds, cost, eligible) -> bool:
    """Whether a budget larger than the window could beat best_rate (an optimistic bound)."""
    extra = np.arange(1, eligible - len(values) + 1)
    optimistic = batch_size + window_gain + extra * values[-1]
    verify = batch_size + len(values) + extra
    seconds = cost.verify_time(verify, batch_size, kv_tokens, eager=False) + draft_seconds
    return bool(np.any(optimistic / seconds > best_rate))
