"""Fast paths of the engine's hot loop, each with the reference it must equal (tests compare them).

- LatticeReader.read(positions, depth) == trace.lattice_batch(positions, max_depth=depth).
  Shipped traces store the same node layout at every position (k + (S-1)k² nodes in level order,
  echo_runtime.lattice), so the node columns reshape to [positions, nodes] and a read is a row
  gather of the first m_d columns (the nodes of depth <= d) instead of a flat index gather plus a
  truncation pass: about 3x faster at batch 256. Other traces fall back to trace.lattice_batch.
- LatticeReader.read_beam(positions, depth, width, expand_min_score) == beam.beam_batch_reference
  of that depth-only read: the nodes a width-k' drafter grows (beam.py), vectorised over the
  batch on the generator's layout (beam.UniformBeam: one compacted table per width, a read is a
  row gather), the per-lattice reference elsewhere. With width >= the trace's k and no expand gate
  it is the depth-only read, bit for bit.
- chain_acceptance(read.on_path_chain, offsets, selected) == on_path_acceptance(lattices, selected)
  where every lattice's on-path nodes are one chain (beam.on_path_chains, precomputed per position
  with the tables): acceptance is a prefix test on a [bs, depth] matrix (small batches: _chain_few).
- on_path_acceptance(lattices, selected) == trees.accepted_nodes(lattices, selected), plus the
  on-path depth (what `oracle` accepts). Accepted nodes are on-path by definition, so the walk
  visits only on-path nodes (a few per request) instead of propagating over every node; up to
  FEW_ON_PATH of them (small batches) in a plain loop (_walk_few), else vectorised.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from echo_sim.traces.beam import (SEGMENT_COLUMNS, BeamKeep, UniformBeam, _rows, beam_batch_reference, lazy_rows,
                                 on_path_chains, read_only)
from echo_sim.traces.format import TraceSet
from echo_sim.trees import ROOT_PARENT, LatticeBatch

NODE_COLUMNS = ("token", "parent", "depth", "cond_prob", "score", "on_path")
FEW_ON_PATH = 24  # up to this many on-path nodes in a batch, a plain loop beats the vectorised walk


class LatticeReader:
    """Reads the lattices of a batch of global trace positions, truncated to a drafted depth."""

    def __init__(self, trace: TraceSet):
        self.trace = trace
        # header facts, read once (each is a property of the trace: a lookup per step otherwise)
        self.depth, self.width, self.chain_only = trace.depth, trace.width, trace.is_chain_only
        self.has_confidences = trace.has_confidences
        self.columns = None  # name -> array [positions, nodes per lattice], when the layout is uniform
        self.level_prefix = None  # int [S + 1]: nodes of depth <= d in every lattice
        self.beam = None  # UniformBeam, when the layout is the generator's (echo_runtime.lattice)
        self.on_path_chain = None
        self._frontier_rows: dict[int, np.ndarray] = {}  # read depth -> _stored_frontier's rows
        self._on_path_depths: dict[int, np.ndarray | None] = {}  # width -> on_path_depth column (None: read)
        counts = np.diff(trace.node_offsets)
        if len(counts) == 0 or counts[0] == 0 or np.any(counts != counts[0]):
            return
        per = int(counts[0])
        depth = trace.node_depth.reshape(-1, per)
        if np.any(depth != depth[0]):
            return
        self.level_prefix = np.searchsorted(depth[0], np.arange(int(depth[0].max()) + 1), side="right")
        # read-only views of the trace's columns (a one-request read hands out views of their rows)
        self.columns = read_only({name: getattr(trace, f"node_{name}").reshape(-1, per) for name in NODE_COLUMNS})
        if "score_segments" not in trace._cache:  # echo's calibration reads them for large batches
            from echo_sim.policies.calibration import score_segments  # here: the policies import this module

            segments = score_segments(trace.node_score) if self.has_confidences else None
            trace._cache["score_segments"] = None if segments is None else read_only(
                {name: values.reshape(-1, per) for name, values in zip(SEGMENT_COLUMNS, segments)})
        self.segments = trace._cache["score_segments"]  # name -> [P, per] or None; gathered on demand
        # the beam tables depend on the trace alone: simulations of one trace in a process share them
        if "uniform_beam" not in trace._cache:
            layout_ok = UniformBeam.layout_ok(self.columns, trace.width, trace.depth)
            trace._cache["uniform_beam"] = (UniformBeam({**self.columns, **(self.segments or {})}, trace.width,
                                                        trace.depth) if layout_ok else None)
        self.beam = trace._cache["uniform_beam"]
        if "on_path_chain" not in trace._cache:
            trace._cache["on_path_chain"] = on_path_chains(self.columns["on_path"], depth, self.columns["parent"],
                                                           int(depth[0].max()))
        self.on_path_chain = trace._cache["on_path_chain"]  # int64 [P, S] or None (on_path_chains)

    def read(self, positions: np.ndarray, max_depth: int) -> LatticeBatch:
        """The lattices at `positions` (int64 [bs], global) with nodes of depth <= max_depth."""
        if self.columns is None:
            return self.trace.lattice_batch(positions, max_depth=max_depth)
        keep = int(self.level_prefix[min(max_depth, len(self.level_prefix) - 1)])
        gathered = {name: _rows(column, positions, keep).ravel() for name, column in self.columns.items()}
        return LatticeBatch(
            offsets=np.arange(len(positions) + 1, dtype=np.int64) * keep,
            spine_run=self.trace.spine_run[positions],
            has_confidences=self.has_confidences,
            score_segments=(None if self.segments is None else
                            lazy_rows(tuple(self.segments[name] for name in SEGMENT_COLUMNS), positions, keep)),
            **gathered,
        )

    def read_beam(self, positions: np.ndarray, max_depth: int, width: int) -> "BeamRead":
        """The nodes a width-`width`, depth-`max_depth` drafter grows at `positions` (beam.py)."""
        depth = min(max_depth, self.depth)
        if width >= self.width or depth < 1 or self.chain_only:
            lattices = self.read(positions, depth)
            chain = None if self.on_path_chain is None else self.on_path_chain[positions, :depth]
            return BeamRead(lattices, self._stored_frontier(positions, lattices, depth), None, chain)
        if self.beam is None:
            return BeamRead(*beam_batch_reference(self.read(positions, depth), width, depth))
        flat, offsets, frontier, exactness, chain, segments = self.beam.table(width).read(positions, depth)
        lattices = LatticeBatch(offsets=offsets, spine_run=self.trace.spine_run[positions],
                                has_confidences=self.has_confidences, score_segments=segments, **flat)
        return BeamRead(lattices, frontier, exactness, chain)

    def on_path_depth(self, positions: np.ndarray, width: int) -> np.ndarray:
        """int64 [bs]: the on-path depth of the full-depth width-`width` read at `positions` (the
        shape-best oracle's view of narrower drafts): on_path_depth_reference, from a per-position
        column counted once per width where the read's on-path chains are precomputed."""
        if width not in self._on_path_depths:
            chain = None
            if width < self.width and self.depth >= 1 and not self.chain_only \
                    and self.beam is not None:
                chain = self.beam.table(width).on_path_chain  # int64 [P, S], the read's chains
            self._on_path_depths[width] = (None if chain is None else
                                           np.count_nonzero(chain >= 0, axis=1).astype(np.int64))
        column = self._on_path_depths[width]
        return self.on_path_depth_reference(positions, width) if column is None else column[positions]

    def on_path_depth_reference(self, positions: np.ndarray, width: int) -> np.ndarray:
        """on_path_depth by reading the lattices and walking their on-path nodes."""
        narrow = self.read_beam(positions, self.depth, width)
        if narrow.on_path_chain is not None:
            return np.count_nonzero(narrow.on_path_chain >= 0, axis=1).astype(np.int64)
        return on_path_acceptance(narrow.lattices, np.zeros(narrow.lattices.num_nodes, dtype=bool))[2]

    def _stored_frontier(self, positions, lattices: LatticeBatch, depth: int) -> np.ndarray:
        """bool [n]: the read's nodes of levels < depth that the stored lattice expanded."""
        if self.beam is not None:
            if depth not in self._frontier_rows:  # [P, nodes of depth <= d]: expanded, of a level < d
                keep = int(self.level_prefix[min(depth, len(self.level_prefix) - 1)])
                self._frontier_rows[depth] = (self.beam.expanded[:, :keep]
                                              & (self.columns["depth"][:, :keep] < depth))
            return np.take(self._frontier_rows[depth], positions, axis=0).ravel()
        full = self.trace.lattice_batch(positions)  # children deeper than the read are not in it
        expanded = np.zeros(full.num_nodes, dtype=bool)
        parent = full.global_parent()
        expanded[parent[parent != ROOT_PARENT]] = True
        return expanded[full.depth <= depth] & (lattices.depth < depth)  # level order: a prefix per lattice


@dataclass(frozen=True)
class BeamRead:
    """A beam read: the grown lattices, which of their nodes the drafter expanded (bool [n]:
    frontier nodes of levels below the read's depth; echo's expand gate and the ragged draft cost
    start from it), where the read is inexact (None: the stored lattice itself, exact), and, when
    every lattice's on-path nodes are one chain, their local indices (chain_acceptance walks them)."""

    lattices: LatticeBatch
    frontier: np.ndarray
    exactness: BeamKeep | None
    on_path_chain: np.ndarray | None = None  # int64 [bs, depth]: beam.on_path_chains of the read, if known


def on_path_acceptance(lattices: LatticeBatch, selected: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(accepted bool [n], accepted_depth int32 [bs], on_path_depth int64 [bs]).

    accepted and accepted_depth are exactly trees.accepted_nodes(lattices, selected): a node is
    accepted when it is selected, on-path, and its parent is accepted or is the root. Only on-path
    nodes are visited. In a trace the on-path nodes of a lattice are one chain (one node per depth
    1…D: siblings carry distinct tokens), so a node is accepted iff no on-path node before it in
    its lattice is unselected; a lattice that breaks this is walked level by level instead.
    """
    bs = lattices.batch_size
    if lattices.num_nodes == 0:  # nothing drafted (ar): the same zeros every step
        return _nothing_accepted(bs)
    accepted = np.zeros(lattices.num_nodes, dtype=bool)
    accepted_depth = np.zeros(bs, dtype=np.int32)
    on_path_depth = np.zeros(bs, dtype=np.int64)
    index = np.flatnonzero(lattices.on_path)
    if len(index) == 0:
        return accepted, accepted_depth, on_path_depth
    if len(index) <= FEW_ON_PATH:
        _walk_few(lattices, index, selected, accepted, accepted_depth, on_path_depth)
        return accepted, accepted_depth, on_path_depth
    rows = np.searchsorted(lattices.offsets, index, side="right") - 1
    depth = lattices.depth[index]
    last = np.flatnonzero(np.append(rows[1:] != rows[:-1], True))  # level order: deepest is last
    on_path_depth[rows[last]] = depth[last]
    first = np.append(0, last[:-1] + 1)
    if on_path_depth.sum() == len(index):  # one chain per lattice
        missed = np.cumsum(~selected[index])
        before_row = np.repeat(missed[first] - ~selected[index[first]], last - first + 1)
        hit = missed == before_row
    else:
        hit = _walk_levels(lattices, index, rows, depth, selected)
    accepted[index[hit]] = True
    rows_hit, depth_hit = rows[hit], depth[hit]
    if len(rows_hit):
        end = np.flatnonzero(np.append(rows_hit[1:] != rows_hit[:-1], True))
        accepted_depth[rows_hit[end]] = depth_hit[end]
    return accepted, accepted_depth, on_path_depth


def chain_acceptance(chain: np.ndarray, offsets: np.ndarray, selected: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """on_path_acceptance(lattices, selected) when each lattice's on-path nodes are one chain from
    level 1, given by their local indices `chain` int64 [bs, d] (-1 past its end; BeamRead): a node
    is accepted iff it and every on-path node above it are selected."""
    if chain.size <= FEW_ON_PATH:
        return _chain_few(chain, offsets, selected)
    present = chain >= 0
    accepted = np.zeros(len(selected), dtype=bool)
    if not np.count_nonzero(present):
        return accepted, np.zeros(len(chain), dtype=np.int32), np.zeros(len(chain), dtype=np.int64)
    nodes = chain + offsets[:-1, None]  # past a chain's end: its offset - 1 >= -1, a valid index, masked
    hit = np.logical_and.accumulate(present & selected[nodes], axis=1)
    accepted[nodes[hit]] = True
    return accepted, hit.sum(axis=1).astype(np.int32), present.sum(axis=1).astype(np.int64)


def _chain_few(chain, offsets, selected) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """chain_acceptance of a few lattices (small batches) in one plain loop."""
    accepted = np.zeros(len(selected), dtype=bool)
    accepted_depth = np.zeros(len(chain), dtype=np.int32)
    on_path_depth = np.zeros(len(chain), dtype=np.int64)
    for row, (nodes, start) in enumerate(zip(chain.tolist(), offsets.tolist())):
        hit = True
        for level, node in enumerate(nodes):
            if node < 0:
                break
            on_path_depth[row] = level + 1
            hit = hit and bool(selected[start + node])
            if hit:
                accepted[start + node] = True
                accepted_depth[row] = level + 1
    return accepted, accepted_depth, on_path_depth


def _walk_few(lattices, index, selected, accepted, accepted_depth, on_path_depth) -> None:
    """on_path_acceptance for a few on-path nodes (small batches), one plain loop in flat order:
    level order puts a parent before its children, so a node is accepted iff it is selected and
    its parent is the root or accepted (an off-path parent never is). Fills the outputs in place."""
    offsets = lattices.offsets.tolist()
    nodes = index.tolist()
    parents = lattices.parent[index].tolist()
    depths = lattices.depth[index].tolist()
    chosen = selected[index].tolist()
    accepted_set = set()
    row = 0
    for node, parent, depth, pick in zip(nodes, parents, depths, chosen):
        while offsets[row + 1] <= node:
            row += 1
        on_path_depth[row] = max(on_path_depth[row], depth)
        if pick and (parent == ROOT_PARENT or parent + offsets[row] in accepted_set):
            accepted_set.add(node)
            accepted_depth[row] = max(accepted_depth[row], depth)
    accepted[list(accepted_set)] = True


def _walk_levels(lattices, index, rows, depth, selected) -> np.ndarray:
    """bool [len(index)]: accepted among the on-path nodes `index`, one vectorised pass per depth."""
    accepted = np.zeros(lattices.num_nodes, dtype=bool)
    parent = lattices.parent[index]
    global_parent = parent + lattices.offsets[rows]
    for level in range(1, int(depth.max()) + 1):
        at = np.flatnonzero(depth == level)
        root_child = parent[at] == ROOT_PARENT
        parent_ok = root_child | accepted[np.where(root_child, 0, global_parent[at])]
        accepted[index[at]] = selected[index[at]] & parent_ok
    return accepted[index]


_NO_INT, _NO_FLOAT, _NO_BOOL = (np.zeros(0, dtype=t) for t in (np.int32, np.float32, bool))  # shared: empty
@functools.lru_cache(maxsize=1024)
def _shared_zeros(bs: int) -> tuple[np.ndarray, ...]:
    """(offsets int64 [bs + 1], accepted depth int32 [bs], on-path depth int64 [bs]), all zero and
    read-only: what every step without nodes has, built once per batch size."""
    arrays = (np.zeros(bs + 1, dtype=np.int64), np.zeros(bs, dtype=np.int32), np.zeros(bs, dtype=np.int64))
    for array in arrays:
        array.flags.writeable = False
    return arrays


def _nothing_accepted(bs: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """on_path_acceptance of lattices without nodes (read-only zeros)."""
    _, accepted_depth, on_path_depth = _shared_zeros(bs)
    return _NO_BOOL, accepted_depth, on_path_depth


def empty_lattices(spine_run: np.ndarray) -> LatticeBatch:
    """Lattices with no nodes, for steps that draft nothing (the spine is kept)."""
    return LatticeBatch(
        offsets=_shared_zeros(len(spine_run))[0], token=_NO_INT, parent=_NO_INT, depth=_NO_INT,
        cond_prob=_NO_FLOAT, score=_NO_FLOAT, on_path=_NO_BOOL, spine_run=spine_run,
    )
