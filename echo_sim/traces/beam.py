"""What a narrower or shallower drafter grows, read from a stored k-wide lattice (TRACES.md
"Lattice growth" with k' in place of k).

The width-k' beam, depth S' (the generator's rule, echo_runtime.lattice):
  level 1      the first k' of the root's stored children (the draft's top-k' in topk order);
  level l + 1  each frontier node's first k' stored children; candidates are ordered
               (frontier slot, child rank); the next frontier is the k' best candidates by
               cumulative score, ties to the lower candidate index (a stable sort). Level 1's
               frontier is its candidates in order.
The stored lattice only holds the children of its own k-frontier. A k'-frontier node that the
stored lattice did not expand has unknown children: they are absent (never invented) and the read
is *inexact* from the next level on (`incomplete_level`). An optional expand gate leaves frontier
nodes with a cumulative score below `expand_min_score` unexpanded on purpose (echo's gate=expand:
not counted as inexact). Reads at k' >= k with no gate keep every stored node (the depth-only read).

Two implementations that tests compare: `beam_keep_reference` (one lattice, any layout, a plain
loop) and `UniformBeam.keep` (the generator's fixed layout, vectorised over a batch of positions).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from echo_sim.trees import ROOT_PARENT, LatticeBatch


@dataclass(frozen=True)
class BeamKeep:
    """Where a width-k', depth-S' read from a k-wide lattice is not exact, per lattice.

    incomplete_level  int64 [bs]  first level whose candidates are partly unknown, 0 = exact
    on_path_cut_level int64 [bs]  the level below an on-path frontier node that the stored lattice
                                  did not expand (the target's path is lost there), 0 = never
    """

    incomplete_level: np.ndarray
    on_path_cut_level: np.ndarray


def beam_keep_reference(parent, depth, score, on_path, width: int, max_depth: int,
                        expand_min_score: float = -np.inf) -> tuple[np.ndarray, np.ndarray, int, int]:
    """One lattice (local arrays in level order): (keep bool [m], expanded bool [m]: the frontier
    nodes the drafter expands, incomplete level, on-path cut level) for a width-`width`,
    depth-`max_depth` beam (module docstring)."""
    m = len(parent)
    children: dict[int, list[int]] = {}
    for node in range(m):
        children.setdefault(int(parent[node]), []).append(node)
    stored_levels = set(int(d) for d in depth)
    keep = np.zeros(m, dtype=bool)
    expanded = np.zeros(m, dtype=bool)
    incomplete = cut = 0
    candidates = children.get(ROOT_PARENT, [])[:width]
    for level in range(1, max_depth + 1):
        keep[candidates] = True
        if level == max_depth or not candidates:
            break
        if level == 1:
            frontier = candidates
        else:  # sorted() is stable: equal scores keep the lower candidate index first
            frontier = sorted(candidates, key=lambda node: -float(score[node]))[:width]
        grown = []
        for node in frontier:
            if float(score[node]) < expand_min_score:
                continue
            expanded[node] = True  # the drafter runs it, whether or not the stored lattice knows its children
            below = children.get(node, [])
            if not below and level + 1 in stored_levels:
                incomplete = incomplete or level + 1
                if on_path[node]:
                    cut = cut or level + 1
            grown += below[:width]
        candidates = grown
    return keep, expanded, incomplete, cut


class UniformBeam:
    """The beam over the generator's fixed layout (echo_runtime.lattice): M = k + (S-1)k² nodes per
    lattice, level l >= 2 at k + (l-2)k² + p·k + c for stored frontier slot p and child rank c.

    The ungated beam of a width depends only on the position, and a depth-S' beam is the depth-S
    beam cut at S' (it is grown level by level), so it is grown once per width for every position
    of the trace (`table`, vectorised, on first use of the width) and a read is a row gather. The expand gate needs no regrowth:
    cumulative scores never increase along a path, so a node's ancestors all pass the gate iff its
    parent does, and gated-out frontier nodes only remove their own children (module docstring).
    `layout_ok(columns, k, S)` says whether a trace has this layout (else use the reference).
    """

    def __init__(self, columns: dict, width: int, depth: int):
        self.width, self.depth, self.columns = width, depth, columns
        k = width
        parent = columns["parent"]
        # stored frontier of level l (1 … S-1): the parent of child rank 0 of each slot p, [P, k]
        self.stored_frontier = [parent[:, self.base(level + 1) + np.arange(k) * k] for level in range(1, depth)]
        self.expanded = np.zeros(parent.shape, dtype=bool)  # [P, M]: the stored lattice expanded it
        rows = np.arange(parent.shape[0])[:, None]
        for frontier in self.stored_frontier:
            self.expanded[rows, frontier] = True
        self._tables: dict[int, BeamTable] = {}

    def base(self, level: int) -> int:
        """Column of the first node of `level` (>= 2) in a lattice."""
        return self.width + (level - 2) * self.width * self.width

    @staticmethod
    def layout_ok(columns: dict, width: int, depth: int) -> bool:
        k = width
        parent = columns["parent"]
        if k < 1 or depth < 1 or parent.shape[1] != k + (depth - 1) * k * k:
            return False
        if np.any(parent[:, :k] != ROOT_PARENT):
            return False
        for level in range(2, depth + 1):
            base = k + (level - 2) * k * k
            block = parent[:, base: base + k * k].reshape(-1, k, k)
            if np.any(block != block[:, :, :1]):  # one parent per slot
                return False
            slots = np.sort(block[:, :, 0], axis=1)
            lo = 0 if level == 2 else k + (level - 3) * k * k
            if np.any(np.diff(slots, axis=1) <= 0) or np.any(slots < lo) or np.any(slots >= base):
                return False  # distinct parents, all on the previous level
        return True

    def table(self, width: int) -> "BeamTable":
        """The full-depth width-`width` beam of every position of the trace (grown once)."""
        if width not in self._tables:
            positions = self.columns["score"].shape[0]
            parts = [self._grow(np.arange(lo, min(lo + 1024, positions)), width)
                     for lo in range(0, positions, 1024)]
            kept, frontier, lost = (np.concatenate(part) for part in zip(*parts))
            self._tables[width] = BeamTable.build(self.columns, kept, frontier, lost, width, self.depth)
        return self._tables[width]

    def _grow(self, positions: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(kept, frontier, lost) bool [bs, M]: grown nodes, frontier nodes of levels < S (the
        drafter expands them), and those of them whose children the stored lattice lacks."""
        bs, k = len(positions), self.width
        score = self.columns["score"][positions]
        rows = np.arange(bs)[:, None]
        kept = np.zeros(score.shape, dtype=bool)
        frontier_mask = np.zeros(score.shape, dtype=bool)
        lost_mask = np.zeros(score.shape, dtype=bool)
        kept[:, :width] = True
        frontier = np.broadcast_to(np.arange(width), (bs, width))
        valid = np.ones((bs, width), dtype=bool)
        for level in range(1, self.depth):
            match = frontier[:, :, None] == self.stored_frontier[level - 1][positions][:, None, :]
            known = match.any(axis=2)
            frontier_rows = np.broadcast_to(rows, frontier.shape)
            frontier_mask[frontier_rows[valid], frontier[valid]] = True
            lost = valid & ~known
            lost_mask[frontier_rows[lost], frontier[lost]] = True
            grow = valid & known
            slot = np.argmax(match, axis=2)
            candidates = (self.base(level + 1) + slot[:, :, None] * k + np.arange(width)).reshape(bs, -1)
            present = np.repeat(grow, width, axis=1)
            kept[np.broadcast_to(rows, candidates.shape)[present], candidates[present]] = True
            ranked = np.where(present, -score[rows, candidates].astype(np.float64), np.inf)
            order = np.argsort(ranked, axis=1, kind="stable")[:, :width]
            frontier = np.take_along_axis(candidates, order, axis=1)
            valid = np.take_along_axis(present, order, axis=1)
        return kept, frontier_mask, lost_mask


SEGMENT_COLUMNS = ("score_segment", "score_offset")  # calibration.score_segments per node, [P, M]


class BeamTable:
    """One width k''s full-depth beam at every position, compacted to the left in a padded layout
    [P, M'] with M' = k' + (S-1)k'²: row p holds its kept nodes in their stored order (level order),
    parents renumbered to that order, then zero padding. The nodes of depth <= d are the first
    level_count[p, d] of a row, all within its first k' + (d-1)k'² columns, so a depth-d read is a
    row gather of those columns with padding squeezed out, and what the read says about
    exactness is precomputed per position (`_up_to`).

    columns      name -> [P, M'] the node columns of the kept nodes
    frontier     bool [P, M']  frontier nodes of levels < S (expanded by the drafter)
    level_count  int64 [P, S + 1]  kept nodes of depth <= d
    incomplete, cut   int64 [P]  1 + the lowest level of a frontier node whose children the stored
                 lattice lacks (of an on-path one, for cut), 0 if none
    on_path_chain  int64 [P, S] or None: on_path_chains of the compacted rows
    """

    def __init__(self, columns: dict, frontier, level_count, incomplete, cut, width: int, depth: int):
        # the calibration's score segments of the kept nodes, when the reader has them: gathered on demand
        segments = read_only({name: columns.pop(name) for name in SEGMENT_COLUMNS if name in columns})
        self.segments = tuple(segments.values()) or None
        self.columns, self.frontier, self.level_count = read_only(columns), frontier, level_count
        frontier.flags.writeable = False
        self.incomplete, self.cut, self.width, self.depth = incomplete, cut, width, depth
        self.on_path_chain = on_path_chains(columns["on_path"], columns["depth"], columns["parent"], depth)
        self._exact_up_to: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # read depth -> _up_to of incomplete, cut

    @classmethod
    def build(cls, columns: dict, kept, frontier, lost, width: int, depth: int) -> "BeamTable":
        level = columns["depth"]  # [P, M]
        width_total = width + (depth - 1) * width * width
        # compaction keeps the row-major order of the kept nodes: boolean masks on both sides
        inside = np.arange(width_total) < np.count_nonzero(kept, axis=1)[:, None]
        rank = np.cumsum(kept, axis=1) - 1  # column of each kept node in its compacted row
        parent = columns["parent"]
        renumbered = np.where(parent == ROOT_PARENT, ROOT_PARENT,
                              np.take_along_axis(rank, np.maximum(parent, 0), axis=1)).astype(parent.dtype)
        out = {}
        for name, values in {**columns, "parent": renumbered, "frontier": frontier}.items():
            compact = np.zeros(inside.shape, dtype=values.dtype)
            compact[inside] = values[kept]
            out[name] = compact
        compact_frontier = out.pop("frontier")
        per_level = np.stack([np.count_nonzero(kept & (level == d), axis=1) for d in range(depth + 1)], axis=1)
        return cls(out, compact_frontier, np.cumsum(per_level, axis=1), _lowest_level(lost, level),
                   _lowest_level(lost & columns["on_path"], level), width, depth)

    def read(self, positions: np.ndarray, depth: int) -> tuple:
        """(flat columns, offsets int64 [bs + 1], frontier bool [n], exactness, on-path chain
        int64 [bs, depth] or None, score segments on demand or None) of the depth-`depth` beam at
        `positions`."""
        m = self.width + (depth - 1) * self.width * self.width
        keep = self.level_count[positions, depth]
        rows = {name: _rows(values, positions, m) for name, values in self.columns.items()}
        frontier = _rows(self.frontier, positions, m)
        bs = len(positions)
        inside = None
        if np.all(keep == m):
            flat = {name: values.ravel() for name, values in rows.items()}
            frontier = frontier.ravel()
            offsets = np.arange(bs + 1, dtype=np.int64) * m
        else:
            inside = np.arange(m) < keep[:, None]
            flat = {name: values[inside] for name, values in rows.items()}
            frontier = frontier[inside]
            offsets = np.zeros(bs + 1, dtype=np.int64)
            np.cumsum(keep, out=offsets[1:])
        if depth < self.depth:  # the drafter expands the frontier of levels < depth only
            frontier = frontier & (flat["depth"] < depth)
        if depth not in self._exact_up_to:  # per position, what a depth-`depth` read sees of them
            self._exact_up_to[depth] = (_up_to(self.incomplete, depth), _up_to(self.cut, depth))
        incomplete, cut = self._exact_up_to[depth]
        exactness = BeamKeep(incomplete[positions], cut[positions])
        chain = None if self.on_path_chain is None else self.on_path_chain[positions, :depth]
        segments = None if self.segments is None else lazy_rows(self.segments, positions, m, inside)
        return flat, offsets, frontier, exactness, chain, segments


def _rows(values: np.ndarray, positions: np.ndarray, m: int) -> np.ndarray:
    """values[positions, :m], contiguous: a whole-row np.take is the fastest gather, a sliced
    fancy index the next (both copy only what they return); one position's row is a view (a
    read of one request: no copy at all), read-only as the tables are (read_only)."""
    if len(positions) == 1:
        return values[int(positions[0]), :m][None]
    return np.take(values, positions, axis=0) if m == values.shape[1] else values[positions, :m]


def lazy_rows(columns: tuple, positions: np.ndarray, m: int, inside: np.ndarray | None = None):
    """() -> each column's rows[positions, :m] flattened (only the `inside` cells, when given), as a
    read gathers its node columns, but gathered when called (LatticeBatch.score_segments)."""
    def gather() -> tuple:
        rows = [_rows(values, positions, m) for values in columns]
        return tuple(r.ravel() if inside is None else r[inside] for r in rows)
    return gather


def read_only(arrays: dict) -> dict:
    """The tables' arrays, marked read-only: reads hand out views of single rows (_rows)."""
    for values in arrays.values():
        values.flags.writeable = False
    return arrays


def _lowest_level(mask: np.ndarray, level: np.ndarray) -> np.ndarray:
    """int64 [P]: 1 + the lowest level of each row's masked nodes, 0 if none."""
    lowest = np.where(mask, level, np.iinfo(np.int32).max).min(axis=1, initial=np.iinfo(np.int32).max)
    return np.where(mask.any(axis=1), lowest.astype(np.int64) + 1, 0)


def _up_to(first_level: np.ndarray, depth: int) -> np.ndarray:
    """A full-depth BeamKeep level seen by a depth-`depth` read: the missing children of a frontier
    node of level l only matter when the read grows level l + 1 <= depth."""
    return np.where(first_level <= depth, first_level, 0)


def on_path_chains(on_path: np.ndarray, depth: np.ndarray, parent: np.ndarray, max_depth: int) -> np.ndarray | None:
    """int64 [P, max_depth]: the local index of each lattice's on-path node at levels 1 … max_depth
    (-1 past its end), rows [P, m] of lattices in level order; None unless every lattice's on-path
    nodes are one chain from level 1 (one per level, each the child of the one above), as the trace
    generator's are (siblings carry distinct tokens)."""
    positions = on_path.shape[0]
    row, column = np.nonzero(on_path)
    level = depth[row, column].astype(np.int64)
    if len(level) and (level.min() < 1 or level.max() > max_depth):
        return None
    chain = np.full((positions, max_depth + 1), -1, dtype=np.int64)
    chain[row, level] = column
    if np.count_nonzero(chain[:, 1:] >= 0) != len(row):  # two on-path nodes on one level
        return None
    chain = chain[:, 1:]
    present = chain >= 0
    if np.any(present[:, 1:] & ~present[:, :-1]):  # a gap: not one chain from level 1
        return None
    above = np.where(level == 1, ROOT_PARENT, chain[row, np.maximum(level - 2, 0)])
    if np.any(parent[row, column] != above):
        return None
    return chain


def keep_nodes(batch: LatticeBatch, keep: np.ndarray) -> LatticeBatch:
    """The batch restricted to `keep` (closed under "parent of"), local parents renumbered."""
    counts = np.bincount(batch.request_of_node()[keep], minlength=batch.batch_size)
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    new_global = np.cumsum(keep) - 1  # flat index of each kept node in the result
    parent = batch.global_parent()[keep]
    rows = np.repeat(np.arange(batch.batch_size), counts)
    local_parent = np.where(parent == ROOT_PARENT, ROOT_PARENT,
                            new_global[np.maximum(parent, 0)] - offsets[rows]).astype(batch.parent.dtype)
    return replace(batch, offsets=offsets, token=batch.token[keep], parent=local_parent,
                   depth=batch.depth[keep], cond_prob=batch.cond_prob[keep], score=batch.score[keep],
                   on_path=batch.on_path[keep], score_segments=None)


def beam_batch_reference(batch: LatticeBatch, width: int, max_depth: int, expand_min_score: float = -np.inf
                         ) -> tuple[LatticeBatch, np.ndarray, BeamKeep]:
    """(lattices, expanded bool [n] over them, exactness) of the beam of every lattice of a batch,
    one lattice at a time (beam_keep_reference)."""
    keep = np.zeros(batch.num_nodes, dtype=bool)
    expanded = np.zeros(batch.num_nodes, dtype=bool)
    incomplete = np.zeros(batch.batch_size, dtype=np.int64)
    cut = np.zeros(batch.batch_size, dtype=np.int64)
    for row, (lo, hi) in enumerate(zip(batch.offsets[:-1], batch.offsets[1:])):
        part = slice(lo, hi)
        keep[part], expanded[part], incomplete[row], cut[row] = beam_keep_reference(
            batch.parent[part], batch.depth[part], batch.score[part], batch.on_path[part], width, max_depth,
            expand_min_score)
    return keep_nodes(batch, keep), expanded[keep], BeamKeep(incomplete, cut)
