"""Fast paths of the policies' step equal the references they replace, bit for bit (the numpy
function they replace, or the plain reading of the rule)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from echo_sim.cost.model import load_cost_model
from echo_sim.policies.budget import _first_of_runs, candidate_shapes
from echo_sim.policies.calibration import (BIN_CENTRES, BIN_EDGES, NUM_BINS, CalibrationCurve, GridSearch,
                                           curve_segments, interp_centres, score_bins, score_bins_reference, within_unit)
from echo_sim.policies.echo import level_tokens, verify_cut
from echo_sim.testing import full_trace
from echo_sim.traces.reader import LatticeReader
from echo_sim.trees import ROOT_PARENT, top_b

COST = load_cost_model("h200")


def awkward_scores(rng, size: int) -> np.ndarray:
    """Scores where a lookup can go wrong: the breakpoints themselves and their float neighbours
    (float64 and float32), grid-cell corners, out of range, tiny deep-node scores, ordinary ones."""
    points = np.concatenate((BIN_CENTRES, BIN_EDGES))
    near = np.concatenate([np.nextafter(points, side) for side in (-np.inf, np.inf)])
    near32 = np.concatenate([np.nextafter(points.astype(np.float32), np.float32(side)) for side in (-1, 2)])
    corners = np.arange(0, 2**15 + 1) / 2**15
    return np.concatenate((points, near, near32, corners, [0.0, 1.0, -1.0, 2.0, np.inf, -np.inf],
                           rng.random(size) ** rng.integers(1, 12), rng.random(size) * 1e-4))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(["sorted", "rounded", "flat", "decreasing"]), st.booleans())
def test_interp_centres_is_np_interp_bit_for_bit(seed, kind, single):
    rng = np.random.default_rng(seed)
    values = {"sorted": np.sort(rng.random(NUM_BINS)), "rounded": np.round(np.sort(rng.random(NUM_BINS)), 1),
              "flat": np.full(NUM_BINS, rng.random()), "decreasing": np.sort(rng.random(NUM_BINS))[::-1].copy()}[kind]
    score = awkward_scores(rng, 5000)
    score = score.astype(np.float32) if single else score
    expect = np.interp(score, BIN_CENTRES, values)
    got = interp_centres(score, values, curve_segments(values))
    assert got.dtype == expect.dtype and np.array_equal(got.view(np.int64), expect.view(np.int64))
    assert np.array_equal(interp_centres(score, values).view(np.int64), expect.view(np.int64))  # segments built here


def test_interp_centres_nan_and_empty_take_np_interp():
    values = np.linspace(0.1, 0.9, NUM_BINS)
    score = np.array([0.3, np.nan, 0.01])
    assert not within_unit(score) and not within_unit(np.array([0.5, 1.5])) and within_unit(np.array([0.0, 1.0]))
    assert np.array_equal(interp_centres(score, values, curve_segments(values)),
                          np.interp(score, BIN_CENTRES, values), equal_nan=True)
    assert interp_centres(np.zeros(0), values, curve_segments(values)).shape == (0,)
    small = np.linspace(0.0, 1.0, 100)  # below GRID_MIN: np.interp itself
    assert np.array_equal(interp_centres(small, values, curve_segments(values)), np.interp(small, BIN_CENTRES, values))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.booleans())
def test_score_bins_fast_path_equals_searchsorted(seed, single):
    rng = np.random.default_rng(seed)
    score = awkward_scores(rng, 5000)
    score = score.astype(np.float32) if single else score
    assert np.array_equal(score_bins(score), score_bins_reference(score))
    assert score_bins(score).dtype == score_bins_reference(score).dtype
    with_nan = np.append(score[:50], np.nan)
    assert np.array_equal(score_bins(with_nan), score_bins_reference(with_nan))
    coarse = np.linspace(0.0, 1.0, 6)  # another binning (trace-info's): the reference itself
    assert np.array_equal(score_bins(score, coarse), score_bins_reference(score, coarse))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=40, unique=True), st.integers(0, 2**32 - 1))
def test_grid_search_equals_searchsorted_for_any_points(points, seed):
    points = np.sort(np.array(points))
    if np.diff(points).min() < 1e-6:  # the table would be huge; GridSearch is for a few bins
        return
    search = GridSearch(points)
    rng = np.random.default_rng(seed)
    x = np.concatenate((points, np.nextafter(points, 2.0), np.nextafter(points, -1.0), rng.random(2000), [0.0, 1.0]))
    x = np.clip(x, 0.0, 1.0)
    assert np.array_equal(search(x), np.searchsorted(points, x, side="right"))
    assert np.array_equal(search(x.astype(np.float32)), np.searchsorted(points, x.astype(np.float32), side="right"))


def test_calibration_curve_after_observations_matches_np_interp():
    rng = np.random.default_rng(3)
    curve = CalibrationCurve(prior_weight=10.0, decay=0.002)
    for _ in range(50):
        score = (rng.random(3000) ** 3).astype(np.float32)
        curve.observe(score, rng.random(3000) < score)
        for size in (50, 20000, 20000):  # a small batch (no segments), then the grid path builds and reuses them
            probe = (rng.random(size) ** 4).astype(np.float32)
            assert np.array_equal(curve(probe), np.interp(probe, BIN_CENTRES, curve.values))


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 300), st.integers(0, 3000), st.sampled_from([False, True]), st.data())
def test_candidate_shapes_prefix_equals_a_fresh_computation(bs, window, bucketing, data):
    """Shapes kept for one window, cut to a smaller one, are those computed for that window."""
    shapes: dict = {}
    larger = data.draw(st.integers(window, window + 9000))
    candidate_shapes(COST, bs, larger, bucketing, shapes)
    kept = candidate_shapes(COST, bs, window, bucketing, shapes)
    budgets = np.arange(window + 1)
    executed, eager = COST.executed_shape(bs + budgets, bs, bucketing)
    if bucketing:
        budgets = _first_of_runs(executed)
        executed, eager = executed[budgets], eager[budgets]
    fresh = budgets, executed, eager, np.minimum(executed - bs, window)
    spanned = candidate_shapes(COST, bs, window, bucketing, {}, span=larger)  # computed for larger, cut
    for a, b, c in zip(kept, fresh, spanned):
        assert a.dtype == b.dtype == c.dtype and np.array_equal(a, b) and np.array_equal(c, b)


TRACE = full_trace(requests=4, positions=64)
READER = LatticeReader(TRACE)


def batch_of(seed: int, size: int = 64):
    """A beam read of random positions: a width below the trace's gives ragged lattices."""
    rng = np.random.default_rng(seed)
    positions = rng.integers(0, TRACE.num_positions, size=size)
    return READER.read_beam(positions, int(rng.integers(1, TRACE.depth + 1)), int(rng.integers(1, TRACE.width + 1))).lattices


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**31), st.floats(0.0, 1.0))
def test_parent_slot_and_the_drafted_mask(seed, share):
    lattices = batch_of(seed)
    rng = np.random.default_rng(seed)
    expanded = rng.random(lattices.num_nodes) < share
    parent = lattices.global_parent()
    base = lattices.offsets[:-1][lattices.request_of_node()]  # the former formula
    assert np.array_equal(parent, np.where(lattices.parent == ROOT_PARENT, ROOT_PARENT, lattices.parent + base))
    reference = (parent == ROOT_PARENT) | expanded[np.maximum(parent, 0)]
    assert np.array_equal(np.append(expanded, True).take(lattices.parent_slot()), reference)
    levels = level_tokens(lattices, expanded, int(lattices.max_depth), COST)
    counts = np.bincount(lattices.depth[expanded], minlength=lattices.max_depth + 1)[1:lattices.max_depth]
    expect = [lattices.batch_size]
    for count in counts:
        if count == 0:
            break
        expect.append(int(COST.executed_shape(np.array([int(count)]), lattices.batch_size)[0][0]))
    assert levels == tuple(expect)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 400), st.booleans())
def test_top_b_with_candidates_and_verify_cut(seed, budget, ties):
    lattices = batch_of(seed, 16)
    rng = np.random.default_rng(seed)
    confidence = rng.random(lattices.num_nodes)
    if ties:
        confidence = np.round(confidence, 1)
    eligible = rng.random(lattices.num_nodes) < 0.7
    plain = top_b(confidence, lattices.score, lattices.depth, eligible, budget)
    index = np.flatnonzero(eligible)
    given_candidates = top_b(confidence, lattices.score, lattices.depth, eligible, budget, (index, confidence[index]))
    assert np.array_equal(plain, given_candidates)
    # verify_cut: the rule as written (any eligible node left out; min verified, else max eligible)
    if not np.any(eligible & ~plain):
        expect = 0.0
    else:
        expect = float(confidence[plain].min() if plain.any() else confidence[eligible].max())
    assert verify_cut(confidence, plain, eligible) == expect


def per_request_top_reference(lattices, quota: int, eligible=None) -> np.ndarray:
    """The rule as written: per request, its quota best eligible nodes by score desc, depth asc, node asc."""
    chosen = np.zeros(lattices.num_nodes, dtype=bool)
    for lo, hi in zip(lattices.offsets[:-1], lattices.offsets[1:]):
        nodes = [i for i in range(lo, hi) if eligible is None or eligible[i]]
        nodes.sort(key=lambda i: (-float(lattices.score[i]), int(lattices.depth[i]), i))
        chosen[nodes[:quota]] = True
    return chosen


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(0, 90), st.sampled_from(["none", "rounded", "masked"]))
def test_per_request_top_uniform_equals_the_rule(seed, quota, kind):
    from dataclasses import replace

    from echo_sim.policies.common import per_request_top

    rng = np.random.default_rng(seed)
    lattices = TRACE.lattice_batch(rng.integers(0, TRACE.num_positions, size=24))
    if kind == "rounded":  # many ties at the boundary: the first ties of a row win
        lattices = replace(lattices, score=np.round(lattices.score, 1).astype(np.float32))
    eligible = rng.random(lattices.num_nodes) < 0.8 if kind == "masked" else None
    quotas = np.full(lattices.batch_size, quota)
    assert np.array_equal(per_request_top(lattices, quotas, eligible), per_request_top_reference(lattices, quota, eligible))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.booleans())
def test_level_profile_by_columns_equals_the_flat_selection(seed, full):
    from echo_sim.policies.shape import level_profile, uniform_levels

    rng = np.random.default_rng(seed)
    positions = rng.integers(0, TRACE.num_positions, size=32)
    lattices = TRACE.lattice_batch(positions) if full else batch_of(seed, 32)
    confidence = np.where(rng.random(lattices.num_nodes) < 0.7, rng.random(lattices.num_nodes), 0.0)
    columns = uniform_levels(lattices)
    if full:
        assert columns is not None
    for width in range(1, TRACE.width + 1):
        for level in range(1, TRACE.depth + 1):
            slots = width if level == 1 else width * width
            assert np.array_equal(level_profile(lattices, confidence, level, slots, columns),
                                  level_profile(lattices, confidence, level, slots))


def test_level_profile_by_columns_needs_the_level_in_one_block():
    """Lattices out of level order (hand-made ones) take the flat selection."""
    from echo_sim.policies.shape import level_profile, uniform_levels
    from echo_sim.trees import LatticeBatch

    depth = np.array([1, 2, 1] * 3, dtype=np.int32)
    lattices = LatticeBatch(offsets=np.arange(4) * 3, token=np.zeros(9, np.int32),
                            parent=np.array([-1, 0, -1] * 3, np.int32), depth=depth,
                            cond_prob=np.full(9, 0.5, np.float32), score=np.full(9, 0.5, np.float32),
                            on_path=np.zeros(9, bool), spine_run=np.zeros(3, np.int32))
    confidence = np.arange(9) / 10
    columns = uniform_levels(lattices)
    assert columns is not None
    assert np.array_equal(level_profile(lattices, confidence, 1, 2, columns), level_profile(lattices, confidence, 1, 2))
