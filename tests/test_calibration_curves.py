"""The "curve" form of a calibration: measured token-count curves instead of lines.

Synthetic grids are timed by a known, deliberately non-monotone per-token-count function (what one
CPU thread does: 3 rows slower than 4) plus known additive terms; the fit must give it back, and
the simulator's prefill must leave the draft out for a policy that never drafts.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from echo_sim.cost.calibration_file import CalibratedTerms, load_calibration, write_calibration
from echo_sim.cost.calibration_fit import CalibrationPoint, fit_calibration
from echo_sim.config import SimConfig
from echo_sim.cost.model import CostModelError, StepShape, load_cost_model
from echo_sim.engine import simulate
from echo_sim.cost.piecewise import PiecewiseLinear, hat_basis
from echo_sim.testing import random_trace

# seconds of a forward of n tokens, as measured on the 2-core machine (shape, not exact values)
TARGET_BY_TOKENS = {1: 0.29, 2: 0.60, 3: 0.90, 4: 0.55, 8: 0.66, 16: 0.86, 32: 1.30, 64: 2.3, 128: 4.2}
DRAFT_LEVEL_BY_TOKENS = {1: 0.15, 2: 0.22, 4: 0.16, 8: 0.20, 16: 0.26}
PREFILL_BY_TOKENS = {64: 2.0, 128: 3.6}  # LM head on one token: below a verify of as many tokens
PER_REQUEST, PER_KV, PER_PAIR = 0.01, 2e-5, 1e-6
DRAFT_PER_LEVEL_KV = 5e-6


def synthetic_points() -> list[CalibrationPoint]:
    points = []
    for bs, v, kv in itertools.product((1, 2, 4), (1, 2, 3, 4, 8, 16, 32), (64, 256)):
        tokens = bs * v
        if tokens not in TARGET_BY_TOKENS or v == 32 and bs > 1:
            continue
        pairs = tokens * (kv + v)
        depth, width = (2, 4, 6)[v % 3], 4
        draft = (DRAFT_LEVEL_BY_TOKENS[bs] + (depth - 1) * DRAFT_LEVEL_BY_TOKENS[bs * width]
                 + depth * bs * kv * DRAFT_PER_LEVEL_KV)
        points.append(CalibrationPoint(bs, tokens, bs * kv, pairs, depth, width, True,
                                       TARGET_BY_TOKENS[tokens] + PER_REQUEST * bs + PER_KV * bs * kv + PER_PAIR * pairs,
                                       draft))
    for tokens, draft_prefill in ((64, 0.7), (128, 1.3)):
        points.append(CalibrationPoint(1, tokens, 0, tokens * (tokens + 1) // 2, 0, 1, True,
                                       PREFILL_BY_TOKENS[tokens], draft_prefill_s=draft_prefill, prefill=True))
    return points


def test_piecewise_curve_interpolates_like_numpy_and_continues_past_the_ends():
    curve = PiecewiseLinear((1, 2, 4, 8), (0.3, 0.6, 0.5, 0.7))
    inside = np.linspace(1, 8, 57)
    np.testing.assert_allclose(curve(inside), np.interp(inside, [1, 2, 4, 8], [0.3, 0.6, 0.5, 0.7]), atol=1e-12)
    np.testing.assert_allclose(curve([12, 0.5]), [0.7 + 4 * 0.05, 0.3 - 0.5 * 0.3], atol=1e-12)
    assert curve([-100])[0] == 0.0  # never negative
    np.testing.assert_allclose(curve(inside), hat_basis(inside, curve.knots) @ np.array(curve.seconds), rtol=1e-15)
    # one point's seconds do not depend on the array it is priced in (its position, the length)
    single = [curve([x])[0] for x in inside]
    assert curve(inside).tolist() == single == curve(np.concatenate(([3.3], inside)))[1:].tolist()
    with pytest.raises(ValueError, match="strictly increasing"):
        PiecewiseLinear((1, 1), (0.1, 0.2))


def test_curve_fit_gives_back_a_non_monotone_verify_curve_and_the_additive_terms():
    fit = fit_calibration(synthetic_points(), form="curve").verify
    assert fit.token_curve.knots == (1, 2, 3, 4, 8, 16, 32, 64)  # the V of the verify points
    np.testing.assert_allclose(fit.token_curve.seconds, [TARGET_BY_TOKENS[k] for k in fit.token_curve.knots],
                               rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose([fit.per_request_s, fit.per_kv_token_s, fit.per_attention_pair_s],
                               [PER_REQUEST, PER_KV, PER_PAIR], rtol=1e-5)
    # the linear form cannot follow V = 3 > V = 4; the curve does
    linear = fit_calibration(synthetic_points(), form="linear").verify
    three = dict(tokens=3, batch_size=1, kv_tokens=64, pairs=3 * 67)
    truth = TARGET_BY_TOKENS[3] + PER_REQUEST + PER_KV * 64 + PER_PAIR * 3 * 67
    assert abs(float(fit.forward(**three)) / truth - 1) < 1e-6
    assert abs(float(linear.forward(**three)) / truth - 1) > 0.2


def test_curve_fit_gives_back_the_draft_per_level_times():
    draft = fit_calibration(synthetic_points(), form="curve").draft
    assert draft.level_curve.knots == tuple(sorted(DRAFT_LEVEL_BY_TOKENS))
    np.testing.assert_allclose(draft.level_curve.seconds, [DRAFT_LEVEL_BY_TOKENS[k] for k in draft.level_curve.knots],
                               rtol=1e-6, atol=1e-9)
    # an unmeasured shape: bs 4, depth 5, width 2 -> levels of 4, 8, 8, 8, 8 tokens
    expected = DRAFT_LEVEL_BY_TOKENS[4] + 4 * DRAFT_LEVEL_BY_TOKENS[8] + 5 * 300 * DRAFT_PER_LEVEL_KV
    assert draft.time(4, 5, 2, 300) == pytest.approx(expected, rel=1e-6)
    assert draft.prefill(96, 0) == pytest.approx(1.0)  # halfway between the measured 64 and 128


def test_draft_extend_points_measure_the_level_curve_between_the_grid_sizes():
    # level-1 forwards over 3, 5, 6 and 16 pending tokens of 2 requests (what `calibrate` pairs with
    # its bs = 1 curve points), every level timed with a known cost per request row: the new knots join
    # the curve, the row cost is recovered (16 tokens also ran as the 4 rows of the grid's bs = 4
    # lattice levels), and a level of 6 tokens is priced as measured, not interpolated from 4 and 8
    uneven = {3: 0.40, 5: 0.31, 6: 0.45}
    per_row = 0.004
    rows = {3: 2, 5: 2, 6: 2, 16: 2}
    truth = {**DRAFT_LEVEL_BY_TOKENS, **uneven}
    kv = 64  # per request
    extend = [CalibrationPoint(1, 20 + n, kv, (20 + n) * 84, 1, 4, True, 1.0,
                               truth[n] + rows[n] * (kv * DRAFT_PER_LEVEL_KV + per_row),
                               draft_first_tokens=n, draft_batch_size=rows[n]) for n in rows]
    grid = [p if p.draft_s is None else
            CalibrationPoint(**{**p.__dict__, "draft_s": p.draft_s + p.draft_depth * p.batch_size * per_row})
            for p in synthetic_points()]
    draft = fit_calibration(grid + extend, form="curve").draft
    assert draft.level_curve.knots == tuple(sorted(set(DRAFT_LEVEL_BY_TOKENS) | set(uneven)))
    np.testing.assert_allclose(draft.level_curve.seconds, [truth[k] for k in draft.level_curve.knots], rtol=1e-6)
    assert draft.per_level_request_s == pytest.approx(per_row, rel=1e-6)
    # a draft extend over 6 accepted tokens (2 requests x 3), then 2 levels of 2 x 4 frontier nodes
    expected = uneven[6] + 2 * DRAFT_LEVEL_BY_TOKENS[8] + 3 * 2 * per_row
    assert draft.time(2, 3, 4, 0, first_tokens=6) == pytest.approx(expected, rel=1e-6)


def test_prefill_leaves_the_draft_out_for_a_policy_that_never_drafts(tmp_path):
    path = tmp_path / "cal.json"
    write_calibration(path, points=synthetic_points(), hardware="cpu-test", model="m", draft_model="d", dtype="fp32",
                      tp=1, software={"torch": "x"}, command="test", graph_buckets=[], kv_capacity_tokens=100_000,
                      prefill_chunk_tokens=4096, step_overhead_s=0.0, per_request_overhead_s=0.0, form="curve")
    cost = load_cost_model(calibration=path)
    target_only = PREFILL_BY_TOKENS[64]
    assert cost.prefill_time(64, 0, with_draft=False) == pytest.approx(target_only, rel=1e-6)
    assert cost.prefill_time(96, 0, with_draft=False) == pytest.approx(2.8, rel=1e-6)  # between the measured
    assert cost.prefill_time(64, 0) == pytest.approx(target_only + 0.7, rel=1e-6)
    shape = dict(batch_size=0, verify_tokens=0, kv_tokens=0, attention_pairs=0, draft_depth=0, draft_width=0,
                 prefill_tokens=64)
    assert cost.components(StepShape(**shape, prefill_draft=False))["prefill"] == pytest.approx(target_only, rel=1e-6)

    # the simulator's first step of `ar` (a prefill-only step) is charged the target alone
    trace = random_trace(np.random.default_rng(3), num_requests=2, output_len=(4, 6))
    runs = {}
    for policy in ("ar", "static-chain"):
        result = simulate(SimConfig(policy=policy, concurrency=1, requests=1, workload="trace", calibration=str(path),
                                    step_log=True, seed=0), trace=trace)
        first = result.steps.iloc[0]
        runs[policy] = (first["end"] - first["start"], int(first["prefill_tokens"]))
    (ar_seconds, prompt), (chain_seconds, _) = runs["ar"], runs["static-chain"]
    terms = CalibratedTerms(load_calibration(path))
    assert ar_seconds == pytest.approx(terms.prefill(prompt, 0, with_draft=False) + terms.scheduler(0))
    assert chain_seconds == pytest.approx(terms.prefill(prompt, 0) + terms.scheduler(0))
    assert chain_seconds > ar_seconds


def test_curve_calibration_round_trips_and_names_a_bad_curve(tmp_path):
    path = tmp_path / "cal.json"
    written = write_calibration(path, points=synthetic_points(), hardware="cpu-test", model="m", draft_model="d",
                                dtype="fp32", tp=1, software={"torch": "x"}, command="test", graph_buckets=[],
                                kv_capacity_tokens=100_000, prefill_chunk_tokens=4096, step_overhead_s=0.0,
                                per_request_overhead_s=0.0, form="curve")
    assert load_calibration(path).fit == written.fit
    data = json.loads(path.read_text())
    assert max(abs(p["verify_rel_err"]) for p in data["points"]) < 1e-5
    data["fit"]["verify"]["token_curve"]["knots"][1] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(CostModelError, match=r"cal.json: field 'fit.verify.token_curve' .*strictly increasing"):
        load_calibration(path)
    data["fit"]["verify"]["token_curve"] = {"knots": [1, 2], "seconds": [0.1, float("nan")]}
    path.write_text(json.dumps(data))
    with pytest.raises(CostModelError, match=r"fit.verify.token_curve.seconds\[1\]"):
        load_calibration(path)
    with pytest.raises(CostModelError, match="form 'spline'"):
        fit_calibration(synthetic_points(), form="spline")
