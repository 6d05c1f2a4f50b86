"""Fast paths of a step's fixed costs (what a step of one or two requests pays whatever it verifies)
equal the references they replace, bit for bit: the cost model's few-candidate verify in plain
floats, every draft shape of a width from one pass over its levels, the oracle's per-width on-path
depths from a per-position column, its shapes scored in one array pass."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from echo_sim.cost.model import load_cost_model
from echo_sim.cost.roofline import FEW, SHORT_SUM
from echo_sim.paths import TRACES_DIR
from echo_sim.policies.base import DraftShape, StepContext
from echo_sim.policies.calibration import BIN_CENTRES, CalibrationCurve, curve_segments, score_segments
from echo_sim.policies.common import step_seconds, step_seconds_reference
from echo_sim.policies.oracle import OraclePolicy
from echo_sim.policies.shape import NO_DRAFT, draft_levels
from echo_sim.testing import random_trace
from echo_sim.traces.reader import LatticeReader, on_path_acceptance

COSTS = {name: load_cost_model(hardware, model, cost=mode) for name, (hardware, model, mode) in {
    "h200-fitted": ("h200", "llama-3.1-8b", None), "h200-roofline": ("h200", "llama-3.1-8b", "roofline"),
    "h200-moe": ("h200", "qwen3-235b-a22b", None)}.items()}
COSTS["calibration"] = load_cost_model(calibration=TRACES_DIR / "calibration" / "cpu-2core_qwen2.5-coder-1.5b.json")
ROOFLINES = ["h200-fitted", "h200-roofline", "h200-moe"]  # the plain-float verify is the roofline's


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(ROOFLINES), st.lists(st.integers(0, 9000), min_size=1, max_size=FEW),
       st.integers(1, 300), st.integers(0, 2_000_000), st.booleans(), st.booleans())
def test_few_candidate_verify_equals_the_array_path(name, extra, bs, kv, eager, warm):
    """verify_time of up to FEW candidates (plain floats) against the same candidates priced among
    more than FEW (the array path); cold counts (not tabulated yet) fall back to the array path."""
    cost = load_cost_model("h200", cost="roofline") if not warm else COSTS[name]
    v = bs + np.array(extra)
    few = cost.verify_time(v, bs, kv, eager)  # first: a cold model tabulates in its fallback
    many = cost.verify_time(np.concatenate((v, np.full(FEW + 1, bs))), bs, kv, eager)[: len(v)]
    assert few.dtype == many.dtype and few.shape == v.shape
    assert few.tolist() == many.tolist()
    assert cost.verify_time(v.reshape(1, -1), bs, kv, eager).tolist() == [many.tolist()]  # shape kept
    assert cost.verify_time(v + 0.5, bs, kv, eager).tolist() == cost.verify_time(
        np.concatenate((v + 0.5, np.full(FEW + 1, bs + 0.5))), bs, kv, eager)[: len(v)].tolist()  # not integral


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(COSTS)), st.integers(1, 300), st.integers(0, 2_000_000),
       st.lists(st.tuples(st.integers(0, 9000), st.booleans()), min_size=1, max_size=50))
def test_step_seconds_of_graphs_only_equals_the_split(name, bs, kv, shapes):
    cost = COSTS[name]
    executed = np.array([bs + extra for extra, _ in shapes], dtype=np.int64)
    eager = np.array([e for _, e in shapes])
    for mask in (eager, np.zeros_like(eager)):
        expected = np.empty(len(executed))
        for is_eager in (False, True):
            pick = mask == is_eager
            if pick.any():
                expected[pick] = cost.verify_time(executed[pick], bs, kv, eager=is_eager)
        got = step_seconds(cost, executed, mask, bs, kv)
        assert got.dtype == np.float64 and got.tolist() == expected.tolist()


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(sorted(COSTS)), st.integers(1, 300), st.lists(st.integers(0, 2_000_000), min_size=2, max_size=5),
       st.integers(1, 12_000), st.booleans(), st.booleans())
def test_remembered_shape_lists_price_as_verify_time(name, bs, kvs, span, bucketing, cold):
    """A budget's candidate list priced step after step at changing ΣKV (CostModel.executed_seconds
    remembers its fixed terms after the first) equals the per-group verify_time rule every time."""
    cost = load_cost_model("h200", cost="roofline") if cold and name != "calibration" else COSTS[name]
    executed, eager = cost.executed_shape(bs + np.arange(span + 1), bs, bucketing)
    first = step_seconds(cost, executed, eager, bs, kvs[0], 1)  # a cold list first priced by a prefix ...
    assert first.tolist() == step_seconds_reference(cost, executed[:1], eager[:1], bs, kvs[0]).tolist()
    if name != "calibration":  # ... is remembered whole from then on (its counts tabulated)
        assert cost.executed_seconds(executed, eager, bs, kvs[0]) is not None
    for kv in kvs:
        expected = step_seconds_reference(cost, executed, eager, bs, kv)
        assert step_seconds(cost, executed, eager, bs, kv).tolist() == expected.tolist()
        cut = kv % len(executed) + 1  # a prefix of the remembered list (a budget's window)
        assert step_seconds(cost, executed, eager, bs, kv, cut).tolist() == expected[:cut].tolist()


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(COSTS)), st.integers(1, 300), st.integers(1, SHORT_SUM + 2), st.integers(1, 4),
       st.integers(0, 2_000_000), st.booleans())
def test_draft_times_equal_draft_time_per_shape(name, bs, depth, width, kv, warm):
    cost = load_cost_model("h200") if not warm else COSTS[name]  # cold: counts not tabulated yet
    grid = cost.draft_times(bs, depth, width, kv)
    expected = [[cost.draft_time(bs, d, w, kv_tokens=kv) for d in range(1, depth + 1)] for w in range(1, width + 1)]
    assert grid == expected and all(type(x) is float for row in grid for x in row)
    assert cost.draft_times(bs, depth, width, kv) == expected  # tabulated now: the one-pass path
    other = kv // 3 + 17  # the shape's remembered token terms, at another ΣKV
    assert cost.draft_times(bs, depth, width, other) == [
        [cost.draft_time(bs, d, w, kv_tokens=other) for d in range(1, depth + 1)] for w in range(1, width + 1)]


def test_draft_levels_reads_the_grid():
    cost = COSTS["h200-fitted"]
    first, per_level = draft_levels(cost, 8, 5000, 4, 6)
    full = np.array([cost.draft_time(8, 6, w, kv_tokens=5000) for w in range(1, 5)])
    assert first == cost.draft_time(8, 1, 1, kv_tokens=5000)
    assert per_level.tolist() == ((full - first) / 5).tolist()
    assert draft_levels(cost, 8, 5000, 3, 1)[1].tolist() == [0.0, 0.0, 0.0]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**16), st.integers(2, 4), st.integers(1, 4), st.integers(1, 12))
def test_on_path_depth_column_equals_the_read(seed, width, depth, bs):
    trace = random_trace(np.random.default_rng(seed), num_requests=3, width=width, depth=depth, agreement=0.9)
    reader = LatticeReader(trace)
    positions = np.random.default_rng(seed + 1).integers(0, trace.num_positions, bs)
    for w in range(1, width + 1):
        got, expected = reader.on_path_depth(positions, w), reader.on_path_depth_reference(positions, w)
        assert got.dtype == np.int64 and np.array_equal(got, expected)
    full = reader.read(positions, depth)
    walked = on_path_acceptance(full, np.zeros(full.num_nodes, dtype=bool))[2]
    assert np.array_equal(reader.on_path_depth(positions, width), walked)


def best_shape_reference(lattices, context):
    """OraclePolicy._best_shape as the rule reads: one shape at a time."""
    bs, kv = lattices.batch_size, int(np.sum(context.kv_lens))
    width, depth = context.draft.width, context.draft.depth
    reach = {1: np.asarray(lattices.spine_run, dtype=np.int64)}
    full_depth = on_path_acceptance(lattices, np.zeros(lattices.num_nodes, dtype=bool))[2]
    for w in range(2, width + 1):
        reach[w] = full_depth if w == width else np.asarray(context.on_path_depth(w), dtype=np.int64)
    shapes = [NO_DRAFT] + [DraftShape(d, w) for w in range(1, width + 1) for d in range(1, depth + 1)]
    accepted = [np.zeros(bs, dtype=np.int64)] + [np.minimum(reach[s.width], s.depth) for s in shapes[1:]]
    verify = bs + np.array([a.sum() for a in accepted])
    executed, eager = context.cost.executed_shape(verify, bs)
    seconds = np.empty(len(verify))
    for is_eager in (False, True):
        pick = eager == is_eager
        if pick.any():
            seconds[pick] = context.cost.verify_time(executed[pick], bs, kv, eager=is_eager)
    seconds += context.prefill_seconds
    first = context.cost.draft_time(bs, 1, 1, kv_tokens=kv)
    full = np.array([context.cost.draft_time(bs, depth, w, kv_tokens=kv) for w in range(1, width + 1)])
    per_level = (full - first) / (depth - 1) if depth > 1 else np.zeros(width)
    seconds[1:] += [first + (s.depth - 1) * per_level[s.width - 1] for s in shapes[1:]]
    best = int(np.argmax(verify / seconds))
    return shapes[best], accepted[best], (verify / seconds).tolist()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16), st.integers(2, 4), st.integers(1, 5), st.integers(1, 40), st.integers(0, 3),
       st.sampled_from(sorted(COSTS)))
def test_oracle_best_shape_equals_the_shape_by_shape_rule(seed, width, depth, bs, chunk, name):
    trace = random_trace(np.random.default_rng(seed), num_requests=3, width=width, depth=depth, agreement=0.9)
    reader = LatticeReader(trace)
    rng = np.random.default_rng(seed + 1)
    positions = rng.integers(0, trace.num_positions, bs)
    lattices = reader.read(positions, depth)
    cost = COSTS[name]
    context = StepContext(bs, rng.integers(10, 5000, bs), cost, DraftShape(depth, width), depth, width,
                          prefill_seconds=chunk * 1e-3, on_path_depth=lambda w: reader.on_path_depth(positions, w))
    shape, accepted = OraclePolicy()._best_shape(lattices, context)
    expected_shape, expected_accepted, _ = best_shape_reference(lattices, context)
    assert shape == expected_shape and accepted.dtype == np.int64 and np.array_equal(accepted, expected_accepted)


def isotonic_reference(values, weights) -> np.ndarray:
    """Pool adjacent violators as the rule reads: push every value, merge the top two blocks while
    the lower one's mean is larger."""
    means, masses, sizes = [], [], []
    for value, weight in zip(np.asarray(values, float).tolist(), np.asarray(weights, float).tolist()):
        means.append(value), masses.append(weight), sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            mass = masses[-2] + masses[-1]
            mean = (means[-2] * masses[-2] + means[-1] * masses[-1]) / mass
            size = sizes[-2] + sizes[-1]
            del means[-1], masses[-1], sizes[-1]
            means[-1], masses[-1], sizes[-1] = mean, mass, size
    return np.repeat(means, sizes)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 40), st.sampled_from(["random", "sorted", "reversed", "ties", "nan"]))
def test_isotonic_fit_equals_the_plain_pool_adjacent_violators(seed, size, kind):
    from echo_sim.policies.calibration import isotonic_non_decreasing

    rng = np.random.default_rng(seed)
    values = {"random": rng.random(size), "sorted": np.sort(rng.random(size)), "reversed": np.sort(rng.random(size))[::-1],
              "ties": np.round(rng.random(size), 1), "nan": np.where(rng.random(size) < 0.2, np.nan, rng.random(size))}[kind]
    weights = rng.random(size) * 100 + 1e-3
    got, expected = isotonic_non_decreasing(values, weights), isotonic_reference(values, weights)
    assert got.dtype == expected.dtype == np.float64 and got.shape == expected.shape
    assert np.array_equal(got.view(np.int64), expected.view(np.int64))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**16), st.integers(2, 4), st.integers(2, 5), st.sampled_from([1, 3, 40, 300]),
       st.integers(1, 5), st.integers(1, 4))
def test_calibrated_confidence_from_read_segments_equals_the_curve(seed, width, depth, bs, read_depth, read_width):
    """ĉ of a read (full or beam, one request or many, ragged rows) from its precomputed score
    segments (LatticeBatch.score_segments) equals the curve of its scores, and the segments equal
    score_segments of those scores; a curve fitted to real counts, with flat runs (ties)."""
    rng = np.random.default_rng(seed)
    trace = random_trace(rng, num_requests=4, width=width, depth=depth, agreement=0.8)
    reader = LatticeReader(trace)
    curve = CalibrationCurve(decay=0.01)
    seen = trace.node_score[:500]
    curve.observe(seen, rng.random(len(seen)) < 0.3)
    positions = rng.integers(0, trace.num_positions, bs)
    read = reader.read_beam(positions, min(read_depth, depth), min(read_width, width)).lattices
    assert read.score_segments is not None
    count, offset = read.score_segments()
    expected_count, expected_offset = score_segments(read.score)
    assert np.array_equal(count, expected_count) and np.array_equal(offset, expected_offset)
    plain = curve(read.score)
    assert curve(read.score, read.score_segments).tolist() == plain.tolist()
    # the scored grid path itself, whatever the size (interp_centres takes it from GRID_MIN scores on)
    values = curve.values
    grid = offset * curve_segments(values)[1].take(count) + curve_segments(values)[2].take(count)
    assert grid.tolist() == np.interp(read.score.astype(np.float64), BIN_CENTRES, values).tolist()
