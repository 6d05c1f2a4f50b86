"""Beam-exact width and depth reads (echo_sim.traces.beam): a hand lattice, a brute-force beam grown
from a draft "model" that knows every node's children, and the fast path against the reference."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echo_sim.testing import random_trace
from echo_sim.traces.beam import beam_batch_reference
from echo_sim.traces.format import TraceSet, validate_trace
from echo_sim.traces.reader import LatticeReader
from echo_sim.trees import ROOT_PARENT


def lattice_trace(lattices, width, depth, targets) -> TraceSet:
    """One request whose position t holds lattices[t] = [(token, parent, depth, cond, score), ...]."""
    counts = [len(lattice) for lattice in lattices]
    token, parent, level, cond, score = (np.array(column) for column in zip(*[n for lat in lattices for n in lat]))
    y = np.asarray(targets, dtype=np.int32)
    on_path = []
    for t, lattice in enumerate(lattices):
        flags = []
        for tok, par, dep, _, _ in lattice:
            spells = t + dep - 1 < len(y) and tok == y[t + dep - 1]
            flags.append(bool(spells and (par == ROOT_PARENT or flags[par])))
        on_path += flags
    trace = TraceSet(
        header={"format_version": 1, "generator": "test", "draft_model": "d", "target_model": "t",
                "width": width, "depth": depth, "decoding": "greedy", "absent_columns": ["draft_prob", "target_prob"]},
        request_ids=["r0"], prompt_len=np.array([4], np.int32), output_len=np.array([len(y)], np.int32),
        position_offsets=np.array([0, len(y)]), target_token=y, draft_rank=np.zeros(len(y), np.int16),
        node_offsets=np.concatenate(([0], np.cumsum(counts))), node_token=token.astype(np.int32),
        node_parent=parent.astype(np.int32), node_depth=level.astype(np.int32),
        node_cond_prob=cond.astype(np.float32), node_score=score.astype(np.float32),
        node_on_path=np.array(on_path, dtype=bool),
    )
    validate_trace(trace)
    return trace


def hand_lattice():
    """k=2, S=3 in the generator's layout. Level 2: n0's children a, b (0.15 each: a tie), n1's c, d
    (0.225, 0.2025): the stored level-2 frontier is c, d, so n0's first child a is never expanded."""
    s0, s1 = 0.5, 0.45
    nodes = [(1, -1, 1, s0, s0), (2, -1, 1, s1, s1),  # 0 n0, 1 n1
             (3, 0, 2, .3, s0 * .3), (4, 0, 2, .3, s0 * .3),  # 2 a, 3 b
             (5, 1, 2, .5, s1 * .5), (6, 1, 2, .45, s1 * .45),  # 4 c, 5 d
             (7, 4, 3, .5, s1 * .5 * .5), (8, 4, 3, .4, s1 * .5 * .4),  # children of c
             (9, 5, 3, .9, s1 * .45 * .9), (10, 5, 3, .05, s1 * .45 * .05)]  # children of d
    return nodes


def test_hand_lattice_narrow_reads():
    trace = lattice_trace([hand_lattice()] * 2, 2, 3, targets=[1, 3])  # y: n0 then a: on-path
    reader = LatticeReader(trace)
    assert reader.beam is not None  # the generator's layout: the fast path runs
    positions = np.array([0])
    # k'=1: n0, then a (n0's first child); a is not in the stored frontier: level 3 unknown
    read = reader.read_beam(positions, 3, 1)
    assert read.lattices.token.tolist() == [1, 3] and read.lattices.parent.tolist() == [-1, 0]
    assert read.frontier.tolist() == [True, True]
    assert read.exactness.incomplete_level.tolist() == [3]
    assert read.exactness.on_path_cut_level.tolist() == [3]  # a is on-path (y_1 = 3)
    shallow = reader.read_beam(positions, 2, 1)
    assert shallow.exactness.incomplete_level.tolist() == [0] and shallow.frontier.tolist() == [True, False]
    # k'=k: the stored lattice itself, bit for bit
    full = reader.read_beam(positions, 3, 2)
    assert full.exactness is None and full.lattices.num_nodes == 10
    assert np.array_equal(full.lattices.token, reader.read(positions, 3).token)
    assert full.frontier.tolist() == [True, True, False, False, True, True, False, False, False, False]
    for read in (reader.read_beam(positions, 3, 1), ):  # the reference agrees
        reference, expanded, exactness = beam_batch_reference(reader.read(positions, 3), 1, 3)
        assert np.array_equal(read.lattices.token, reference.token) and np.array_equal(read.frontier, expanded)
        assert np.array_equal(read.exactness.incomplete_level, exactness.incomplete_level)


# ----------------------------------------------------------------------- brute force from a "model"


class DraftModel:
    """A draft that knows every node's children: top-K tokens and probabilities of any token path,
    deterministic in the path. Probabilities are multiples of 1/quantum, so scores tie often."""

    def __init__(self, seed: int, vocab: int = 12, quantum: int = 8):
        self.seed, self.vocab, self.quantum = seed, vocab, quantum

    def children(self, path: tuple, k: int) -> list[tuple[int, float]]:
        """The draft's top-k (a prefix of one top-6 list: a narrower drafter sees the same ranks)."""
        digest = hashlib.sha256(repr((self.seed, path)).encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
        tokens = rng.choice(self.vocab, size=6, replace=False)
        mass = np.sort(rng.integers(1, self.quantum, size=6))[::-1]
        probs = (mass / (mass.sum() + rng.integers(0, self.quantum))).astype(np.float32)
        return [(int(t), float(p)) for t, p in zip(tokens, probs)][:k]


def grow(model: DraftModel, prefix: tuple, width: int, depth: int) -> dict:
    """The generator's rule (echo_runtime.lattice) run directly on the model: every candidate stored
    in the fixed layout, the frontier the `width` best by float32 score, stable on candidate index."""
    nodes = []  # (path, parent index, depth, cond, score)
    for token, prob in model.children(prefix, width):
        nodes.append(((token,), -1, 1, prob, np.float32(prob)))
    frontier = list(range(width))
    expanded = []
    for level in range(2, depth + 1):
        base = len(nodes)
        expanded += [nodes[i][0] for i in frontier]
        for parent in frontier:
            path, _, _, _, score = nodes[parent]
            for token, prob in model.children(prefix + path, width):
                nodes.append((path + (token,), parent, level, prob, np.float32(score * np.float32(prob))))
        scores = np.array([nodes[i][4] for i in range(base, len(nodes))], dtype=np.float32)
        frontier = [base + int(i) for i in np.argsort(-scores, kind="stable")[:width]]
    return {"nodes": nodes, "paths": [n[0] for n in nodes], "expanded": expanded}


def to_rows(grown: dict):
    return [(path[-1], parent, level, cond, float(score)) for path, parent, level, cond, score in grown["nodes"]]


def paths_row(lattices, row: int) -> list[tuple]:
    """The token path of each node of lattice `row`, in node order."""
    lo, hi = lattices.offsets[row], lattices.offsets[row + 1]
    paths = []
    for i in range(lo, hi):
        parent = lattices.parent[i]
        paths.append((paths[parent] if parent != ROOT_PARENT else ()) + (int(lattices.token[i]),))
    return paths


def paths_of(lattices, row: int = 0) -> list[tuple]:
    return sorted(paths_row(lattices, row))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**16), st.integers(2, 4), st.integers(1, 4), st.data())
def test_reads_equal_a_brute_force_beam(seed, width, depth, data):
    narrow = data.draw(st.integers(1, width))
    read_depth = data.draw(st.integers(1, depth))
    model = DraftModel(seed)
    positions = 6
    lattices = [grow(model, (t,), width, depth) for t in range(positions)]
    trace = lattice_trace([to_rows(g) for g in lattices], width, depth, targets=list(range(positions)))
    reader = LatticeReader(trace)
    assert reader.beam is not None
    read = reader.read_beam(np.arange(positions), read_depth, narrow)
    for t in range(positions):
        truth = grow(model, (t,), narrow, read_depth)
        incomplete = 0 if read.exactness is None else int(read.exactness.incomplete_level[t])
        got = paths_of(read.lattices, t)
        if incomplete == 0:
            assert got == sorted(truth["paths"])  # exactly the nodes the narrow drafter grows
            lo, hi = read.lattices.offsets[t], read.lattices.offsets[t + 1]
            expanded = [p for p, e in zip(paths_row(read.lattices, t), read.frontier[lo:hi]) if e]
            assert sorted(expanded) == sorted(truth["expanded"])
        else:  # exact above the first incomplete level; never a node the drafter would not know
            assert [p for p in got if len(p) < incomplete] == sorted(p for p in truth["paths"] if len(p) < incomplete)
            assert set(got) <= set(grow(model, (t,), width, depth)["paths"])


def test_brute_force_finds_inexact_reads():
    """The comparison above must meet both cases: exact and inexact narrow reads."""
    seen = set()
    for seed in range(30):
        model = DraftModel(seed)
        trace = lattice_trace([to_rows(grow(model, (t,), 4, 4)) for t in range(4)], 4, 4, targets=[0, 1, 2, 3])
        read = LatticeReader(trace).read_beam(np.arange(4), 4, 2)
        seen |= set((read.exactness.incomplete_level > 0).tolist())
    assert seen == {True, False}


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 4), st.integers(1, 4), st.data())
def test_fast_path_equals_reference(seed, width, depth, data):
    trace = random_trace(np.random.default_rng(seed), num_requests=3, width=width, depth=depth)
    reader = LatticeReader(trace)
    assert reader.beam is not None
    positions = np.asarray(data.draw(st.lists(st.integers(0, trace.num_positions - 1), min_size=1, max_size=8)))
    for narrow in range(1, width + 1):
        for read_depth in range(1, depth + 1):
            read = reader.read_beam(positions, read_depth, narrow)
            reference, expanded, exactness = beam_batch_reference(reader.read(positions, read_depth), narrow,
                                                                  read_depth)
            for name in ("offsets", "token", "parent", "depth", "cond_prob", "score", "on_path", "spine_run"):
                assert np.array_equal(getattr(read.lattices, name), getattr(reference, name)), name
                assert getattr(read.lattices, name).dtype == getattr(reference, name).dtype, name
            assert np.array_equal(read.frontier, expanded)
            levels = np.zeros(len(positions)) if read.exactness is None else read.exactness.incomplete_level
            assert np.array_equal(levels, exactness.incomplete_level)


def test_full_width_read_is_the_depth_only_read():
    trace = random_trace(np.random.default_rng(3), num_requests=3, width=3, depth=3)
    reader = LatticeReader(trace)
    positions = np.arange(trace.num_positions)
    for read_depth in (1, 2, 3):
        beam, plain = reader.read_beam(positions, read_depth, 3).lattices, reader.read(positions, read_depth)
        for name in ("offsets", "token", "parent", "depth", "cond_prob", "score", "on_path", "spine_run"):
            assert getattr(beam, name) is getattr(plain, name) or np.array_equal(getattr(beam, name),
                                                                                 getattr(plain, name))


def test_expand_gate_reference_drops_exactly_the_children_of_gated_frontier_nodes():
    """beam_keep_reference with a gate = the ungated beam minus nodes whose parent scores below it
    (the identity echo's expand gate relies on: scores never increase along a path)."""
    trace = random_trace(np.random.default_rng(7), num_requests=4, width=3, depth=4)
    lattices = LatticeReader(trace).read(np.arange(trace.num_positions), 4)
    for threshold in (0.01, 0.05, 0.2):
        ungated, frontier, _ = beam_batch_reference(lattices, 2, 4)
        gated, gated_frontier, _ = beam_batch_reference(lattices, 2, 4, threshold)
        parent = ungated.global_parent()
        keep = (parent == ROOT_PARENT) | (ungated.score[np.maximum(parent, 0)] >= threshold)
        assert np.array_equal(gated.token, ungated.token[keep])
        assert np.array_equal(gated_frontier, (frontier & (ungated.score >= threshold))[keep])


@pytest.mark.parametrize("width", [1, 2, 3])
def test_shipped_trace_fast_path_equals_reference(width):
    from echo_sim.paths import TRACES_DIR
    from echo_sim.traces.format import read_trace

    trace = read_trace(TRACES_DIR / "qa_qwen_coder.trace.npz")
    reader = LatticeReader(trace)
    positions = np.random.default_rng(width).integers(0, trace.num_positions, 64)
    read = reader.read_beam(positions, trace.depth, width)
    reference, expanded, exactness = beam_batch_reference(reader.read(positions, trace.depth), width, trace.depth)
    assert np.array_equal(read.lattices.token, reference.token) and np.array_equal(read.frontier, expanded)
    assert np.array_equal(read.exactness.on_path_cut_level, exactness.on_path_cut_level)
