"""Pieces several policies share: per-request top-m, graph-bucket fitting (through the cost model's
one rule, CostModel.executed_shape), confidences check."""

from __future__ import annotations

import numpy as np

from echo_sim.cost.model import CostModel
from echo_sim.policies.base import PolicyError, Selection
from echo_sim.trees import LatticeBatch


def require_confidences(policy: str, lattices: LatticeBatch) -> None:
    """PolicyError when a tree policy is given a chain-only trace (no lattices, no confidences)."""
    if not lattices.has_confidences:
        raise PolicyError(
            f"policy {policy!r} needs draft lattices with confidences, but the trace is chain-only; "
            "use ar, static-chain or goodput with it"
        )


def per_request_top(lattices: LatticeBatch, quota: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """bool [n]: for each request r, its quota[r] best eligible nodes.

    Order within a request (the project tie-break): score desc, depth asc, node asc. With scores
    non-increasing along paths this is prefix-closed (a parent ranks before its children).

    Shape: quota int [bs]; eligible bool [n] or None (all nodes).
    """
    quota = np.asarray(quota, dtype=np.int64)
    sizes = np.diff(lattices.offsets)
    if len(sizes) and np.all(sizes == sizes[0]) and np.all(quota == quota[0]):
        return _top_uniform(lattices, int(sizes[0]), int(quota[0]), eligible)
    return _top_ragged(lattices, quota, eligible)


def _top_uniform(lattices: LatticeBatch, size: int, quota: int, eligible: np.ndarray | None) -> np.ndarray:
    """Equal-size lattices, one quota: a row-wise partial selection, then the boundary ties.

    Level order makes node order depth order, so "depth asc, node asc" is "first in the row".
    """
    bs = lattices.batch_size
    if size == 0 or quota <= 0:
        return np.zeros(lattices.num_nodes, dtype=bool)
    if quota >= size:
        chosen = np.ones((bs, size), dtype=bool)
    else:
        score = lattices.score.astype(np.float64).reshape(bs, size)
        if eligible is not None:
            score = np.where(eligible.reshape(bs, size), score, -np.inf)
        boundary = -np.partition(-score, quota - 1, axis=1)[:, quota - 1 : quota]  # quota-th best
        chosen = score >= boundary
        # rows with more nodes tied at the boundary than the quota leaves room for take the first
        # ties in the row; where no row has any, `>=` is that selection already (one pass, no cumsum)
        if np.any(np.count_nonzero(chosen, axis=1) != quota):
            above = score > boundary
            tied = score == boundary
            need = quota - above.sum(axis=1, keepdims=True)
            chosen = above | (tied & (np.cumsum(tied, axis=1) <= need))
    chosen = chosen.ravel()
    return chosen if eligible is None else chosen & eligible


def _top_ragged(lattices: LatticeBatch, quota: np.ndarray, eligible: np.ndarray | None) -> np.ndarray:
    """Any sizes and quotas: one lexsort (request, then -score, then depth; stable, so node last)."""
    chosen = np.zeros(lattices.num_nodes, dtype=bool)
    index = np.arange(lattices.num_nodes) if eligible is None else np.flatnonzero(eligible)
    if len(index) == 0:
        return chosen
    rows = lattices.request_of_node()[index]
    order = np.lexsort((lattices.depth[index], -lattices.score[index].astype(np.float64), rows))
    sorted_rows = rows[order]
    starts = np.concatenate(([0], np.cumsum(np.bincount(rows, minlength=lattices.batch_size))))
    rank = np.arange(len(order)) - starts[sorted_rows]
    chosen[index[order[rank < quota[sorted_rows]]]] = True
    return chosen


def step_seconds(
    cost, verify_tokens: np.ndarray, eager: np.ndarray, batch_size: int, kv_tokens: int, count: int | None = None
) -> np.ndarray:
    """float [len(V)]: cost.verify_time of each executed shape, graph or eager (of the first `count`
    only, when given); a CostModel's remembered shape lists (CostModel.executed_seconds) where it answers."""
    if isinstance(cost, CostModel):
        seconds = cost.executed_seconds(verify_tokens, eager, batch_size, kv_tokens, count)
        if seconds is not None:
            return seconds
    return step_seconds_reference(cost, verify_tokens[:count], eager[:count], batch_size, kv_tokens)


def step_seconds_reference(
    cost, verify_tokens: np.ndarray, eager: np.ndarray, batch_size: int, kv_tokens: int
) -> np.ndarray:
    """step_seconds by cost.verify_time, one call per group (graph, eager)."""
    if not eager.any():  # every shape a graph (most steps): one call, no split
        return np.array(cost.verify_time(verify_tokens, batch_size, kv_tokens, eager=False), dtype=np.float64)
    seconds = np.empty(len(verify_tokens), dtype=np.float64)
    for is_eager in (False, True):
        pick = eager == is_eager
        if pick.any():
            seconds[pick] = cost.verify_time(verify_tokens[pick], batch_size, kv_tokens, eager=is_eager)
    return seconds


def fitted_selection(cost, nodes: np.ndarray, batch_size: int, drafts: int, **fields) -> Selection:
    """A Selection whose V = batch_size + drafts is padded up to its graph bucket (eager above all).

    Fixed-shape policies run captured graphs, as SGLang pads a batch to its captured size.
    """
    executed, eager = cost.executed_one(batch_size + drafts, batch_size)
    return Selection(
        nodes=nodes,
        padding=int(executed) - batch_size - drafts,
        eager=bool(eager),
        **fields,
    )
