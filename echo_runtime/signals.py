"""Where a runtime step's lattices and acceptance come from (ARCHITECTURE.md "Signals").

- `ModelSignals`: real speculative decoding. The policy sees the lattices the draft model grew;
  acceptance is the greedy walk over the target's argmax. Output = the target's greedy output.
- `TraceSignals`: timing-only runs with random weights of real shapes. The forwards are real (same
  shapes: the draft grows a lattice of the same k and S, the target verifies the selected tree),
  but the policy sees the trace's lattice at the request's position and acceptance is the trace's
  (TRACES.md replay semantics), exactly as in the simulator.

Both give the engine, per request, the lattice arrays to build the verified tree from and the
accepted verify-local path plus bonus token; the engine does the rest identically. Both also give
the drafter its expand rule (the policy's `drafter_expands`, echo's expand gate) and the policy
the frontier the drafter expanded (StepContext.frontier).
"""

from __future__ import annotations

import numpy as np

from echo_runtime.draft_tree import NOT_FORWARDED, Lattice, empty_lattice, lattice_batch
from echo_runtime.verify import VerifyTree, walk_all
from echo_runtime.vocab import fold_token_ids
from echo_sim.policies.base import DraftShape, Selection
from echo_sim.traces.format import TraceSet
from echo_sim.traces.reader import LatticeReader, empty_lattices
from echo_sim.trees import LatticeBatch, accepted_nodes


def _local_arrays(lattices: LatticeBatch, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    span = slice(int(lattices.offsets[row]), int(lattices.offsets[row + 1]))
    return lattices.token[span], lattices.parent[span], lattices.depth[span]


class ModelSignals:
    """Lattices from the draft model, acceptance from the target's argmax."""

    uses_trace = False

    def __init__(self, use_kernel: bool = False) -> None:
        self.use_kernel = use_kernel  # kernels.tree_verify for the walk (the engine sets it on CUDA)

    def first_token(self, request, argmax: int) -> int:
        return argmax

    def expand_rule(self, rule, requests, shape: DraftShape):
        """grow_lattices' expand rule from the policy's drafter_expands: asked on the lattices
        grown so far, with each request's current frontier marked."""
        def expand(grown: list[Lattice], frontiers: list[np.ndarray]) -> list[np.ndarray]:
            batch = lattice_batch(grown)
            index = [batch.offsets[r] + f for r, f in enumerate(frontiers)]
            frontier = np.zeros(batch.num_nodes, dtype=bool)
            frontier[np.concatenate(index)] = True
            expanded = rule(batch, frontier)
            return [expanded[i] for i in index]
        return expand

    def lattices(self, requests, grown: list[Lattice] | None, shape: DraftShape
                 ) -> tuple[LatticeBatch, np.ndarray | None]:
        """(the grown lattices, bool [n] the nodes the drafter forwarded, i.e. expanded)."""
        if grown is None:  # no drafting this step (ar)
            return lattice_batch([empty_lattice() for _ in requests]), None
        frontier = np.concatenate([lat.scratch != NOT_FORWARDED for lat in grown] or [np.zeros(0, dtype=bool)])
        return lattice_batch(grown), frontier

    def node_arrays(self, lattices: LatticeBatch, row: int, grown, chain: bool):
        return _local_arrays(lattices, row)

    def accept(self, lattices: LatticeBatch, selection: Selection, requests, trees: list[VerifyTree],
               argmax) -> list[tuple[np.ndarray, int]]:
        """argmax: the target's argmax after every verified token, int tensor [Σ m_r]."""
        return walk_all(trees, argmax, self.use_kernel)


class TraceSignals:
    """Lattices and acceptance replayed from a trace; request i replays trace request
    trace_request[i] (the simulator's workload stream decides the mapping), by default i mod R.
    vocab_size: the models' vocabulary; every token id the engine gets (tree tokens, targets) is
    folded into it (echo_runtime.vocab.fold_token_ids)."""

    uses_trace = True

    def __init__(self, trace: TraceSet, trace_request: np.ndarray | None = None,
                 vocab_size: int | None = None) -> None:
        self.trace = trace
        self.reader = LatticeReader(trace)
        self.mapping = None if trace_request is None else np.asarray(trace_request, dtype=np.int64)
        self.vocab_size = vocab_size

    def _fold(self, ids):
        return ids if self.vocab_size is None else fold_token_ids(ids, self.vocab_size)

    def trace_request(self, request) -> int:
        if self.mapping is None:
            return request.index % self.trace.num_requests
        return int(self.mapping[request.index])

    def target_token(self, request, position: int) -> int:
        start = int(self.trace.position_offsets[self.trace_request(request)])
        return int(self._fold(self.trace.target_token[start + position]))

    def first_token(self, request, argmax: int) -> int:
        return self.target_token(request, 0)

    def _global_positions(self, requests) -> np.ndarray:
        return np.array([int(self.trace.position_offsets[self.trace_request(q)]) + q.position
                         for q in requests], dtype=np.int64)

    def _read(self, requests, shape: DraftShape):
        """The trace's lattices as a drafter of this shape grows them: the simulator's beam read
        (echo_sim.traces.reader), so both engines see the same nodes."""
        positions = self._global_positions(requests)
        return self.reader.read_beam(positions, min(shape.depth, self.trace.depth), min(shape.width, self.trace.width))

    def expand_rule(self, rule, requests, shape: DraftShape):
        """The drafter forwards, per request and level, as many frontier nodes as the policy
        expands in the trace's lattice (the simulator's draft cost), its best ones."""
        read = self._read(requests, shape)
        expanded = rule(read.lattices, read.frontier)
        rows = read.lattices.request_of_node()[expanded]
        counts = np.zeros((len(requests), shape.depth + 1), dtype=np.int64)
        np.add.at(counts, (rows, read.lattices.depth[expanded]), 1)

        def expand(grown: list[Lattice], frontiers: list[np.ndarray]) -> list[np.ndarray]:
            return [np.arange(len(f)) < counts[r, lat.depth[f[0]]] if len(f) else np.zeros(0, dtype=bool)
                    for r, (lat, f) in enumerate(zip(grown, frontiers))]
        return expand

    def lattices(self, requests, grown, shape: DraftShape) -> tuple[LatticeBatch, np.ndarray | None]:
        """(the trace's lattices for this shape, bool [n] the nodes its drafter expanded)."""
        if shape.depth <= 0:
            return empty_lattices(self.trace.spine_run[self._global_positions(requests)]), None
        read = self._read(requests, shape)
        return read.lattices, read.frontier

    def node_arrays(self, lattices: LatticeBatch, row: int, grown: list[Lattice], chain: bool):
        if chain:  # a chain verifies the drafter's own chain (tokens only matter for timing)
            lat = grown[row]
            return lat.token, lat.parent, lat.depth
        token, parent, depth = _local_arrays(lattices, row)
        return self._fold(token), parent, depth

    def accept(self, lattices: LatticeBatch, selection: Selection, requests, trees: list[VerifyTree],
               argmax) -> list[tuple[np.ndarray, int]]:
        if selection.chain is not None:
            depth = np.minimum(lattices.spine_run, np.asarray(selection.chain))
            paths = [np.arange(1, int(a) + 1) for a in depth]
        else:
            accepted, depth = accepted_nodes(lattices, selection.nodes)
            paths = []
            for row, tree in enumerate(trees):
                local = accepted[lattices.offsets[row]: lattices.offsets[row + 1]]
                paths.append(1 + np.flatnonzero(local[tree.nodes]))
        return [(path, self.target_token(q, q.position + len(path)) if q.position + len(path) < q.max_new
                 else -1) for q, path in zip(requests, paths)]
