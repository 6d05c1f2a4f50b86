"""The engine's fast paths equal their references (echo_sim.traces.reader docstring)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from echo_sim.traces.reader import FEW_ON_PATH, LatticeReader, _walk_few, on_path_acceptance
from echo_sim.testing import random_trace
from echo_sim.trees import LatticeBatch, accepted_nodes, propagate_all


def drop_deepest_level_at_even_positions(trace):
    """A valid trace whose lattices differ in size (the deepest level is a suffix of a lattice)."""
    position = np.repeat(np.arange(trace.num_positions), np.diff(trace.node_offsets))
    keep = ~((position % 2 == 0) & (trace.node_depth == trace.depth))
    counts = np.bincount(position[keep], minlength=trace.num_positions)
    columns = {name: getattr(trace, name)[keep] for name in
               ("node_token", "node_parent", "node_depth", "node_cond_prob", "node_score", "node_on_path")}
    return replace(trace, node_offsets=np.concatenate(([0], np.cumsum(counts))), _cache={}, **columns)


def same_batch(one, other):
    for name in ("offsets", "token", "parent", "depth", "cond_prob", "score", "on_path", "spine_run"):
        assert np.array_equal(getattr(one, name), getattr(other, name)), name
    assert one.has_confidences == other.has_confidences


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 3), st.integers(1, 4), st.booleans(), st.data())
def test_reader_equals_lattice_batch(seed, width, depth, ragged, data):
    trace = random_trace(np.random.default_rng(seed), num_requests=3, width=width, depth=depth)
    if ragged and depth > 1:
        trace = drop_deepest_level_at_even_positions(trace)
    reader = LatticeReader(trace)
    assert (reader.columns is None) == (ragged and depth > 1)
    positions = np.asarray(data.draw(st.lists(st.integers(0, trace.num_positions - 1), min_size=1, max_size=8)))
    for max_depth in range(1, depth + 2):
        same_batch(reader.read(positions, max_depth), trace.lattice_batch(positions, max_depth=max_depth))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 3), st.integers(1, 4), st.floats(0.0, 1.0), st.booleans())
def test_on_path_acceptance_equals_accepted_nodes(seed, width, depth, density, closed):
    trace = random_trace(np.random.default_rng(seed), num_requests=2, width=width, depth=depth, agreement=0.9)
    rng = np.random.default_rng(seed + 1)
    lattices = trace.lattice_batch(np.arange(trace.num_positions))
    selected = rng.random(lattices.num_nodes) < density
    if closed:
        selected = propagate_all(lattices, selected)
    accepted, accepted_depth, oracle = on_path_acceptance(lattices, selected)
    reference, reference_depth = accepted_nodes(lattices, selected)
    assert np.array_equal(accepted, reference) and np.array_equal(accepted_depth, reference_depth)
    assert np.array_equal(oracle, accepted_nodes(lattices, np.ones(lattices.num_nodes, bool))[1])


def test_on_path_acceptance_walks_levels_when_on_path_is_not_one_chain():
    # request 0: two on-path siblings a, b at depth 1 (a malformed but loadable lattice), c under b;
    # request 1: a plain chain d -> e
    lattices = LatticeBatch(
        offsets=np.array([0, 3, 5]), token=np.arange(5, dtype=np.int32),
        parent=np.array([-1, -1, 1, -1, 0], dtype=np.int32), depth=np.array([1, 1, 2, 1, 2], dtype=np.int32),
        cond_prob=np.full(5, 0.5, dtype=np.float32), score=np.full(5, 0.5, dtype=np.float32),
        on_path=np.ones(5, dtype=bool), spine_run=np.zeros(2, dtype=np.int32),
    )
    selected = np.array([False, True, True, True, False])
    accepted, accepted_depth, oracle = on_path_acceptance(lattices, selected)
    assert accepted.tolist() == [False, True, True, True, False]  # by hand: b, c and d
    assert accepted_depth.tolist() == [2, 1] and oracle.tolist() == [2, 2]
    reference, reference_depth = accepted_nodes(lattices, selected)
    assert np.array_equal(accepted, reference) and np.array_equal(accepted_depth, reference_depth)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 3), st.integers(1, 4), st.floats(0.0, 1.0), st.booleans(),
       st.integers(1, 4), st.booleans())
def test_small_batch_loop_equals_the_vectorised_walk(seed, width, depth, density, closed, bs, two_chains):
    """on_path_acceptance takes a plain loop up to FEW_ON_PATH on-path nodes and the vectorised walk
    above: both equal accepted_nodes, also where on-path nodes are not one chain per lattice."""
    trace = random_trace(np.random.default_rng(seed), num_requests=2, width=width, depth=depth, agreement=0.9)
    rng = np.random.default_rng(seed + 1)
    lattices = trace.lattice_batch(rng.integers(0, trace.num_positions, bs))
    if two_chains:  # mark extra nodes on-path: several on-path nodes per level
        lattices = replace(lattices, on_path=lattices.on_path | (rng.random(lattices.num_nodes) < 0.3))
    selected = rng.random(lattices.num_nodes) < density
    if closed:
        selected = propagate_all(lattices, selected)
    index = np.flatnonzero(lattices.on_path)
    few = (np.zeros(lattices.num_nodes, bool), np.zeros(bs, np.int32), np.zeros(bs, np.int64))
    _walk_few(lattices, index, selected, *few)
    reference, reference_depth = accepted_nodes(lattices, selected)
    assert np.array_equal(few[0], reference) and np.array_equal(few[1], reference_depth)
    deepest = np.zeros(bs, np.int64)  # on-path depth: the deepest on-path node of each lattice
    np.maximum.at(deepest, lattices.request_of_node()[index], lattices.depth[index])
    assert np.array_equal(few[2], deepest)
    if not two_chains:  # one chain per lattice: what the oracle accepts
        assert np.array_equal(few[2], accepted_nodes(lattices, np.ones(lattices.num_nodes, bool))[1])
    vectorised = on_path_acceptance(lattices, selected) if len(index) > FEW_ON_PATH else None
    if vectorised is not None:
        assert all(np.array_equal(a, b) for a, b in zip(vectorised, few))
