"""Draft lattices and selected trees as flat struct-of-arrays over a batch.

A *lattice* is the candidate tree a drafter grows at one output position of one request
(TRACES.md). A step sees one lattice per running request, concatenated:

    request r owns nodes offsets[r] : offsets[r + 1]

Shape conventions (n = total nodes in the batch, bs = requests):
    offsets    int64   [bs + 1]
    token      int32   [n]
    parent     int32   [n]   index *within the request's lattice*; ROOT_PARENT = child of the root
    depth      int32   [n]   1 … S; depth == parent's depth + 1
    cond_prob  float32 [n]   draft conditional probability of the node's token
    score      float32 [n]   cumulative score: product of cond_prob along the path
    on_path    bool    [n]   node's path spells the target's greedy continuation
    spine_run  int32   [bs]  consecutive positions from here whose draft rank of y is 0
                             (what a greedy chain accepts, TRACES.md "Chains")

Invariant relied on everywhere: within a lattice nodes are in level order (depth
non-decreasing), so a parent's global index is smaller than its child's and any
root-to-leaf propagation is one vectorised pass per depth level.

Selections are boolean masks over the n nodes. They must be prefix-closed: a selected
node's parent is selected or is the root.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property

import numpy as np

ROOT_PARENT = -1


@dataclass(frozen=True)
class LatticeBatch:
    """The batch's draft lattices for one engine step (see module docstring for shapes)."""

    offsets: np.ndarray
    token: np.ndarray
    parent: np.ndarray
    depth: np.ndarray
    cond_prob: np.ndarray
    score: np.ndarray
    on_path: np.ndarray
    spine_run: np.ndarray
    has_confidences: bool = True
    # () -> calibration.score_segments(score), gathered from the reader's per-node columns on call
    # (echo's ĉ of a large batch); None where not precomputed
    score_segments: Callable[[], tuple[np.ndarray, np.ndarray]] | None = field(default=None, compare=False,
                                                                                repr=False)

    @property
    def batch_size(self) -> int:
        return len(self.offsets) - 1

    @property
    def num_nodes(self) -> int:
        return int(self.offsets[-1])

    @property
    def max_depth(self) -> int:
        return int(self.depth.max()) if self.num_nodes else 0

    def request_of_node(self) -> np.ndarray:
        """int64 [n]: the batch row that owns each node."""
        return self._request_of_node

    def global_parent(self) -> np.ndarray:
        """int64 [n]: parent's index in the flat arrays, ROOT_PARENT for children of the root."""
        return self._global_parent

    def parent_slot(self) -> np.ndarray:
        """int64 [n]: global_parent with num_nodes for children of the root: `np.append(mask,
        value).take(parent_slot())` reads each node's parent's mask entry, `value` for the root."""
        return self._parent_slot

    # Derived arrays are computed once per batch: the policy, the engine and the metrics all walk
    # the same step's lattices, and these are the hot path of a simulation step.
    @cached_property
    def _request_of_node(self) -> np.ndarray:
        return np.repeat(np.arange(self.batch_size), np.diff(self.offsets))

    @cached_property
    def _global_parent(self) -> np.ndarray:
        return self._parent_plus_offset(ROOT_PARENT)

    @cached_property
    def _parent_slot(self) -> np.ndarray:
        return self._parent_plus_offset(self.num_nodes)

    def _parent_plus_offset(self, root: int) -> np.ndarray:
        """int64 [n]: local parent + the lattice's offset, `root` for children of the root."""
        index = np.repeat(self.offsets[:-1], np.diff(self.offsets))
        index += self.parent
        index[self.parent == ROOT_PARENT] = root
        return index

    @cached_property
    def level_links(self) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
        """Per depth level 2…S: (child indices, their global parent indices), in level order.

        Any root-to-leaf propagation is one vectorised assignment per entry.
        """
        links = []
        gparent = self._global_parent
        for level in range(2, self.max_depth + 1):
            child = np.flatnonzero(self.depth == level)
            links.append((child, gparent[child]))
        return tuple(links)

    def truncate_depth(self, max_depth: int) -> "LatticeBatch":
        """Keep only nodes with depth <= max_depth (levels the drafter actually grew)."""
        if self.num_nodes == 0 or max_depth >= self.max_depth:
            return self
        keep = self.depth <= max_depth
        counts = np.bincount(self.request_of_node()[keep], minlength=self.batch_size)
        offsets = np.concatenate(([0], np.cumsum(counts)))
        # Level order makes the kept nodes a prefix of each lattice: local parents stay valid.
        return replace(
            self,
            offsets=offsets,
            token=self.token[keep],
            parent=self.parent[keep],
            depth=self.depth[keep],
            cond_prob=self.cond_prob[keep],
            score=self.score[keep],
            on_path=self.on_path[keep],
            score_segments=None,
        )


def propagate_all(batch: LatticeBatch, mask: np.ndarray) -> np.ndarray:
    """bool [n]: mask[i] and mask of every ancestor of i (gates a node with its subtree)."""
    out = mask.astype(bool).copy()
    for child, parent in batch.level_links:
        out[child] &= out[parent]
    return out


def running_min(batch: LatticeBatch, values: np.ndarray) -> np.ndarray:
    """float [n]: min of values over each node's path from the root (non-increasing along paths)."""
    out = np.asarray(values, dtype=np.float64).copy()
    for child, parent in batch.level_links:
        out[child] = np.minimum(out[child], out[parent])
    return out


def is_prefix_closed(batch: LatticeBatch, selected: np.ndarray) -> bool:
    """True when every selected node's parent is selected or is the root."""
    gparent = batch.global_parent()
    sel = np.flatnonzero(selected)
    parents = gparent[sel]
    inner = parents != ROOT_PARENT
    return bool(np.all(selected[parents[inner]]))


def accepted_nodes(batch: LatticeBatch, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Greedy acceptance of a prefix-closed selection (TRACES.md replay semantics).

    Returns (accepted bool [n], accepted_depth int32 [bs]): a node is accepted when it is
    selected, on-path and its parent is accepted (or is the root); the accepted depth is the
    deepest accepted node's depth, 0 if none.
    """
    accepted = propagate_all(batch, selected & batch.on_path)
    depth = np.zeros(batch.batch_size, dtype=np.int32)
    if batch.num_nodes:
        rows = batch.request_of_node()[accepted]
        np.maximum.at(depth, rows, batch.depth[accepted])
    return accepted, depth


def nodes_per_request(batch: LatticeBatch, mask: np.ndarray) -> np.ndarray:
    """int64 [bs]: how many nodes of each request the mask holds."""
    return np.bincount(batch.request_of_node()[mask], minlength=batch.batch_size)


def top_b(
    rank_value: np.ndarray, score: np.ndarray, depth: np.ndarray, eligible: np.ndarray, budget: int,
    candidates: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """bool [n]: the `budget` best eligible nodes of the whole batch.

    Order (POLICIES.md, the one tie-break of the project): rank_value desc, score desc,
    depth asc, request asc, node asc. Flat index order is (request asc, node asc), so the
    last two keys are the flat index. Uses a partial selection: only the boundary ties
    are sorted. `candidates`: (np.flatnonzero(eligible), rank_value at them) when the caller
    has them already.
    """
    chosen = np.zeros(len(rank_value), dtype=bool)
    if candidates is None:
        index = np.flatnonzero(eligible)
        candidates = (index, rank_value.take(index))
    candidates, values = candidates
    if budget <= 0 or len(candidates) == 0:
        return chosen
    if budget >= len(candidates):
        chosen[candidates] = True
        return chosen
    kth = len(candidates) - budget
    boundary = np.partition(values, kth)[kth]
    above = candidates[values > boundary]
    chosen[above] = True
    ties = candidates[values == boundary]
    need = budget - len(above)
    # lexsort: last key is primary. Ties on rank_value -> score desc, depth asc, index asc.
    order = np.lexsort((ties, depth[ties], -score[ties].astype(np.float64)))
    chosen[ties[order[:need]]] = True
    return chosen


def supertree_gate(batch: LatticeBatch, gate_value: np.ndarray, threshold: float) -> np.ndarray:
    """bool [n]: eligible nodes, gate_value >= threshold at the node and at all its ancestors.

    A plain threshold is the gate when the passing set is closed under "parent of", as it is for
    cumulative scores (they never increase along a path); otherwise it is propagated."""
    passed = gate_value >= threshold
    child = np.flatnonzero(passed & (batch.parent != ROOT_PARENT))
    if np.all(passed[batch.global_parent()[child]]):
        return passed
    return propagate_all(batch, passed)


def supertree_select(
    batch: LatticeBatch,
    rank_value: np.ndarray,
    gate_value: np.ndarray,
    threshold: float,
    budget: int,
    eligible: np.ndarray | None = None,
    candidates: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """bool [n]: echo's super-tree selection (POLICIES.md steps 1 and 4): the one implementation,
    what `echo` calls and what `kernels.select` must reproduce exactly.

    Gate: a node is eligible when gate_value >= threshold for it and all its ancestors
    (supertree_gate; `eligible` is that result when the caller already computed it, e.g. to
    calibrate only eligible nodes). Rank: the `budget` best eligible nodes of the whole batch by
    rank_value (the calibrated ĉ), ties by raw cumulative score desc, depth asc, request asc, node
    asc (see top_b). With rank_value non-increasing along paths the result is prefix-closed.
    `candidates`: top_b's, when the caller has them.
    """
    if eligible is None:
        eligible = supertree_gate(batch, gate_value, threshold)
    return top_b(rank_value, batch.score, batch.depth, eligible, budget, candidates)
