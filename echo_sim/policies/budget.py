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
                   cost, bucketing: bool, shapes: dict | None = None, tie: float = 0.0) -> int:
    """B* = the smallest B whose rate (bs + Σ_top-B ĉ) / T_step(bs + B) over the eligible nodes' ĉ
    is within a fraction `tie` of the best rate (tie = 0: the argmax, ties to the smaller B).

    The rate is flat around its maximum, so neighbouring budgets often differ by < 0.1 %: far less
    than the cost model's error, and small enough that a live draft's last-bit score differences
    from the trace's flip the argmax. A tie tolerance picks the cheaper step there, stably.

    With bucketing, a candidate B pays for (and is filled up to) its graph bucket, so B* is a
    bucket's draft capacity. Only a window of the top values is sorted (partial selection). The
    window starts at max(16·bs, largest bucket) and doubles while some B beyond it could still win:
    its gain is at most the window's gain plus the window's smallest ĉ per extra node, its time at
    least the graph-replay verify time (exact when T grows with V and eager costs >= graph).
    `shapes`: a dict the caller keeps across steps, where the candidates' executed shapes (which
    depend on bs and the window only) are remembered (candidate_shapes).
    """
    eligible = len(confidence)
    largest = int(max(cost.graph_buckets, default=0))
    first = max(16 * batch_size, largest)
    window = min(eligible, first)
    while True:
        values = top_values(confidence, window)
        gains = np.concatenate(([0.0], np.cumsum(values)))
        known = _known_shapes(cost, batch_size, window, bucketing, shapes, first)
        budgets, executed, eager, filled = _window_shapes(known, batch_size, window)
        # the window's candidates, a prefix of a list that recurs (CostModel.executed_seconds remembers it)
        seconds = step_seconds(cost, known[3], known[4], batch_size, kv_tokens, len(executed)) + draft_seconds
        rates = (batch_size + gains[filled]) / seconds
        top = float(rates.max())
        if window == eligible or not _beyond_may_win(values, gains[-1], top, batch_size, kv_tokens,
                                                     draft_seconds, cost, eligible):
            best = int(np.argmax(rates >= top * (1.0 - tie)))  # the first candidate within the tie
            return int(executed[best] - batch_size) if bucketing else int(budgets[best])
        window = min(eligible, 2 * window)


SHAPES_KEPT = 1024  # candidate_shapes entries a caller's dict holds (batch sizes seen lately)


def candidate_shapes(cost, batch_size: int, window: int, bucketing: bool, shapes: dict | None = None,
                     span: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(budgets, executed tokens, eager, nodes filled) of goodput_budget's candidates B = 0 … window:
    with bucketing one candidate per executed shape, the first B of its run. The shapes are the
    graph rule's, elementwise in B, so those of a smaller window are a prefix: `shapes` (a dict
    the caller keeps) remembers them per batch size for B up to max(window, span) (span: the
    windows to come, whatever this step's eligible count)."""
    return _window_shapes(_known_shapes(cost, batch_size, window, bucketing, shapes, span), batch_size, window)


def _known_shapes(cost, batch_size: int, window: int, bucketing: bool, shapes: dict | None, span: int) -> tuple:
    """(cost, length, budgets, executed, eager) of the candidates B = 0 … length >= window, from
    `shapes` when it has them (candidate_shapes)."""
    key = (id(cost), batch_size, bucketing)
    known = shapes.get(key) if shapes is not None else None
    if known is None or known[0] is not cost or known[1] < window:
        length = max(window, span) if shapes is not None else window
        budgets = np.arange(length + 1)
        executed, eager = cost.executed_shape(batch_size + budgets, batch_size, bucketing)
        if bucketing:  # every B of one executed shape has the same rate: rate each shape once
            budgets = _first_of_runs(executed)
            executed, eager = executed[budgets], eager[budgets]
        known = (cost, length, budgets, executed, eager)
        if shapes is not None:
            if len(shapes) >= SHAPES_KEPT:
                shapes.clear()
            shapes[key] = known
    return known


def _window_shapes(known: tuple, batch_size: int, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """candidate_shapes's answer: the known candidates B <= window, and the nodes each fills."""
    _, _, budgets, executed, eager = known
    count = int(np.searchsorted(budgets, window, side="right"))
    budgets, executed, eager = budgets[:count], executed[:count], eager[:count]
    return budgets, executed, eager, np.minimum(executed - batch_size, window)


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
