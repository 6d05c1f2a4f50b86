"""Step-time model: presets, roofline properties, graph buckets, calibration files and fitting.

References are independent of the code under test: numbers read straight from the preset JSON,
a Monte-Carlo count of distinct experts, hand-computed all-reduce times, synthetic calibration
points generated from known coefficients.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from echo_sim.cost.calibration_file import load_calibration, write_calibration
from echo_sim.cost.calibration_fit import CalibrationPoint, fit_calibration
from echo_sim.cost.model import CostModelError, StepShape, load_cost_model
from echo_sim.cost.presets import known_presets

PRESETS = Path(str(resources.files("echo_sim") / "presets"))


def preset_json(kind: str, name: str) -> dict:
    return json.loads((PRESETS / kind / f"{name}.json").read_text())


def value(entry):
    return entry["value"] if isinstance(entry, dict) else entry


# ---------------------------------------------------------------- presets


def test_every_preset_pair_loads_and_describes_itself():
    assert known_presets("hardware") == ["a100", "h100", "h200"]
    assert known_presets("models") == ["llama-3.1-8b", "qwen2.5-coder-1.5b", "qwen3-235b-a22b", "qwen3-8b"]
    for hardware in known_presets("hardware"):
        for model, mode in ((m, c) for m in known_presets("models") for c in ("roofline", "fitted")):
            cost = load_cost_model(hardware, model, cost=mode)
            info = cost.describe()
            assert info["source"] == cost.source == f"{'preset' if mode == 'roofline' else 'fitted'}:{hardware}/{model}"
            assert info["cost_model"] == mode
            assert (info["hardware"], info["model"], info["dtype"]) == (hardware, model, "bf16")
            assert info["tp"] == (8 if model == "qwen3-235b-a22b" else 1)
            assert cost.kv_capacity_tokens > 100_000 and cost.prefill_chunk_tokens > 0
            times = cost.verify_time(np.array([1, 64, 4096]), 1, 1000)
            assert np.all(np.isfinite(times)) and np.all(times > 0)


def test_every_preset_number_has_a_source():
    for name in known_presets("hardware"):
        for key, entry in preset_json("hardware", name).items():
            if key not in ("name", "description"):
                assert isinstance(entry, dict) and entry["source"], (name, key)
    for name in known_presets("models"):
        data = preset_json("models", name)
        assert data["target"]["source"] and data["draft"]["source"]
        assert data["draft"]["kind"] in ("eagle3", "model")


def test_unknown_names_list_the_known_ones():
    with pytest.raises(CostModelError, match="h100, h200"):
        load_cost_model("b200", "llama-3.1-8b")
    with pytest.raises(CostModelError, match="llama-3.1-8b.*qwen3-8b"):
        load_cost_model("h200", "llama-4")


# ---------------------------------------------------------------- roofline properties


def test_h200_dense_crossover_from_the_preset_numbers():
    hw = preset_json("hardware", "h200")
    ratio = value(hw["matmul_flops_per_s"]) / value(hw["memory_bytes_per_s"])  # FLOP per byte
    # bf16 weights: 2 FLOP per weight per token, 2 bytes per weight -> compute-bound from V = ratio
    assert 170 <= ratio <= 206


def test_h200_dense_linears_turn_compute_bound_at_170_to_206_tokens():
    target = load_cost_model("h200", "llama-3.1-8b", cost="roofline").terms.target
    v = np.arange(1, 401, dtype=float)
    linear = target.breakdown(v, 0.0, v, v)["linear"]
    slope = np.diff(linear)
    kinks = v[1:][slope > 1.5 * slope[0]]  # first forward sizes where the slope has jumped
    assert 170 <= kinks[0] <= 206, kinks[0]
    assert slope[-1] > 5 * slope[0]  # well into the compute-bound regime


def test_small_verify_is_memory_bound_and_flat():
    cost = load_cost_model("h200", "llama-3.1-8b", cost="roofline")
    times = cost.verify_time(np.arange(1, 33), 1, 2000, eager=True)
    assert times.max() / times.min() < 1.03
    big = cost.verify_time(np.array([512, 1024, 2048]), 64, 64 * 200, eager=True)
    assert 1.9 < (big[2] - big[1]) / (big[1] - big[0]) < 2.1  # compute-bound: linear in V


@pytest.mark.parametrize("model", ["llama-3.1-8b", "qwen3-235b-a22b"])
@pytest.mark.parametrize("eager", [False, True])
def test_verify_time_is_monotone_in_v_and_kv(model, eager):
    cost = load_cost_model("h200", model)
    v = np.arange(8, 9000, 7)
    for kv in (0, 10_000, 500_000):
        assert np.all(np.diff(cost.verify_time(v, 8, kv, eager=eager)) >= 0)
    by_kv = [cost.verify_time(np.array([256]), 8, kv, eager=eager)[0] for kv in range(0, 2_000_000, 100_000)]
    assert np.all(np.diff(by_kv) > 0)


def test_step_time_grows_with_batch_size_at_fixed_per_request_work():
    cost = load_cost_model("h200", "llama-3.1-8b", cost="roofline")
    times = []
    for bs in (1, 2, 4, 8, 16, 32, 64, 128, 256):
        kv, v = bs * 1500, bs * 8
        times.append(cost.step_time(StepShape(bs, v, kv, v * (kv + v) // bs, 4, 2)))
    assert np.all(np.diff(times) > 0)


def test_draft_cost_levels_and_chain():
    cost = load_cost_model("h200", "llama-3.1-8b", cost="roofline")
    assert cost.draft_time(16, 0, 4) == 0.0
    assert cost.draft_time(16, 3, 4) < cost.draft_time(16, 4, 4) < cost.draft_time(16, 4, 8)
    assert cost.draft_time(16, 4, 4) < cost.draft_time(64, 4, 4)
    assert cost.draft_time(16, 4, 4, kv_tokens=16 * 4000) > cost.draft_time(16, 4, 4)
    # a chain pays S levels of bs tokens; level 1 always runs bs tokens whatever the width
    chain = cost.draft_time(32, 5, 1)
    assert cost.draft_time(32, 1, 1) == cost.draft_time(32, 1, 8)
    assert math.isclose(chain, cost.draft_time(32, 1, 1) + 4 * (cost.draft_time(32, 2, 1) - cost.draft_time(32, 1, 1)),
                        rel_tol=1e-6)


def test_moe_expert_union_matches_a_monte_carlo_count():
    cost = load_cost_model("h200", "qwen3-235b-a22b", cost="roofline")
    rng = np.random.default_rng(0)
    experts, active = 128, 8

    def distinct(tokens: int) -> float:
        hits = [len({e for _ in range(tokens) for e in rng.choice(experts, active, replace=False)})
                for _ in range(300)]
        return float(np.mean(hits))

    t = np.array([1.0, 4.0, 16.0, 64.0])
    expert_time = cost.terms.target.breakdown(t, 0.0, t, t)["experts"]  # memory-bound here
    measured_ratio = expert_time / expert_time[0]
    expected_ratio = np.array([distinct(int(n)) for n in t]) / active
    assert np.allclose(measured_ratio, expected_ratio, rtol=0.03), (measured_ratio, expected_ratio)


def test_bigger_moe_tree_at_small_batch_mostly_pays_extra_experts():
    target = load_cost_model("h200", "qwen3-235b-a22b", cost="roofline").terms.target
    small, big = (target.breakdown(np.array([n]), 4000.0, np.array([n * 4000.0]), np.array([n]))
                  for n in (1.0, 16.0))
    extra = {k: big[k][0] - small[k][0] for k in small}
    assert extra["experts"] > 0.8 * sum(extra.values())


def test_tensor_parallel_all_reduce_term():
    hw = preset_json("hardware", "h200")
    link, latency = value(hw["link_bytes_per_s"]), value(hw["allreduce_latency_s"])
    moe = load_cost_model("h200", "qwen3-235b-a22b", cost="roofline").terms.target
    tokens = 512.0
    by_hand = 94 * 2 * (2 * 7 / 8 * tokens * 4096 * 2 / link + latency)  # 94 layers, TP 8, bf16
    got = moe.breakdown(np.array([tokens]), 0.0, np.array([tokens]), np.array([tokens]))["allreduce"][0]
    assert math.isclose(got, by_hand, rel_tol=1e-9)
    dense = load_cost_model("h200", "llama-3.1-8b", cost="roofline").terms.target
    assert dense.breakdown(np.array([tokens]), 0.0, np.array([tokens]), np.array([tokens]))["allreduce"][0] == 0
    tp1, tp2 = (load_cost_model("h200", "llama-3.1-8b", tp=tp, cost="roofline").terms.target for tp in (1, 2))
    big = np.array([4096.0])
    ratio = tp2.breakdown(big, 0.0, big, big)["linear"][0] / tp1.breakdown(big, 0.0, big, big)["linear"][0]
    assert 0.45 < ratio < 0.55  # compute-bound linears split across 2 GPUs


def test_eager_pays_launches_and_graph_pads_to_buckets():
    hw = preset_json("hardware", "h200")
    cost = load_cost_model("h200", "llama-3.1-8b", cost="roofline")
    assert cost.graph_bucket(37) == 40 and cost.graph_bucket(40) == 40
    assert cost.graph_bucket(cost.graph_buckets[-1] + 1) is None
    graph, eager = cost.verify_time(np.array([40]), 4, 4000), cost.verify_time(np.array([40]), 4, 4000, eager=True)
    min_launches = 32 * 10 * value(hw["kernel_launch_s"]) - value(hw["graph_launch_s"])
    assert eager[0] - graph[0] >= min_launches
    assert cost.verify_time(np.array([37]), 4, 4000)[0] == graph[0]  # padded to its bucket
    assert cost.verify_time(np.array([37]), 4, 4000, eager=True)[0] < eager[0]  # eager runs 37
    top = cost.graph_buckets[-1]
    above = cost.components(StepShape(64, top + 1, 64_000, (top + 1) * 1100, 0, 1))
    at_top = cost.components(StepShape(64, top, 64_000, top * 1100, 0, 1))
    assert above["overhead"] - at_top["overhead"] >= min_launches


def test_components_add_up_and_match_verify_time():
    cost = load_cost_model("h200", "qwen3-8b", cost="roofline")
    bs, v, kv = 32, 32 * 6, 32 * 3000
    shape = StepShape(bs, v, kv, v * (kv + v) // bs, 5, 4, prefill_tokens=2048, prefill_context=512)
    parts = cost.components(shape)
    assert set(parts) == {"prefill", "draft", "verify", "overhead"}
    assert math.isclose(cost.step_time(shape), sum(parts.values()))
    assert math.isclose(parts["verify"] + parts["overhead"], cost.verify_time(np.array([v]), bs, kv)[0], rel_tol=1e-9)
    assert math.isclose(parts["prefill"], cost.prefill_time(2048, 512))
    assert math.isclose(parts["draft"], cost.draft_time(bs, 5, 4, kv))
    prefill_only = cost.components(StepShape(0, 0, 0, 0, 0, 0, prefill_tokens=4096))
    assert prefill_only["verify"] == prefill_only["draft"] == 0 and prefill_only["prefill"] > 0
    assert cost.prefill_time(4096, 0) < cost.prefill_time(8192, 0) < cost.prefill_time(8192, 8192)


def test_verify_time_keeps_the_candidate_array_shape():
    cost = load_cost_model(cost="roofline")
    assert cost.verify_time(np.arange(1, 13).reshape(3, 4), 1, 100).shape == (3, 4)
    assert cost.verify_time(5, 1, 100).shape == ()


@pytest.mark.parametrize("bad", [dict(batch_size=-1), dict(verify_tokens=2), dict(kv_tokens=1.5),
                                 dict(batch_size=0, verify_tokens=0, draft_depth=2)])
def test_impossible_step_shapes_are_refused(bad):
    fields = dict(batch_size=4, verify_tokens=8, kv_tokens=100, attention_pairs=900, draft_depth=2, draft_width=2)
    with pytest.raises(CostModelError):
        StepShape(**{**fields, **bad})


# ---------------------------------------------------------------- calibration

TRUE_VERIFY = dict(intercept_s=2e-3, per_token_s=2e-6, per_request_s=1e-5, per_kv_token_s=3e-9,
                   per_attention_pair_s=1e-12, eager_s=1.5e-3, per_token_above_knee_s=2e-5)
KNEE = 128
TRUE_DRAFT = dict(per_level_s=3e-4, per_token_s=1e-6, per_level_kv_token_s=2e-9)


def synthetic_points(rng=None, noise=0.0) -> list[dict]:
    """A calibration grid timed by known coefficients (what `echo-run calibrate` would measure)."""
    c, d = TRUE_VERIFY, TRUE_DRAFT
    points, i = [], 0
    for bs in (1, 4, 16, 64):
        for per_request in (1, 2, 4, 8, 16):
            for kv_per_request in (128, 1024):
                v, kv = bs * per_request, bs * kv_per_request
                pairs = v * (kv + v) // bs
                eager, depth, width = i % 2 == 1, (0, 1, 3, 5)[i % 4], (1, 4)[(i // 4) % 2]
                verify = (c["intercept_s"] + c["per_token_s"] * v + c["per_request_s"] * bs
                          + c["per_kv_token_s"] * kv + c["per_attention_pair_s"] * pairs
                          + c["eager_s"] * eager + c["per_token_above_knee_s"] * max(v - KNEE, 0))
                tokens = bs * (1 + (depth - 1) * width) if depth else 0
                draft = depth * d["per_level_s"] + tokens * d["per_token_s"] + depth * kv * d["per_level_kv_token_s"]
                if rng is not None:
                    verify *= 1 + noise * rng.standard_normal()
                    draft *= 1 + noise * rng.standard_normal()
                points.append(dict(batch_size=bs, verify_tokens=v, kv_tokens=kv, attention_pairs=pairs,
                                   draft_depth=depth, draft_width=width, eager=eager, verify_s=verify,
                                   draft_s=draft if depth else None))
                i += 1
    return points


def test_fit_recovers_known_coefficients_exactly():
    fit = fit_calibration(synthetic_points())
    assert fit.verify.knee_tokens == KNEE
    for name, expected in TRUE_VERIFY.items():
        assert math.isclose(getattr(fit.verify, name), expected, rel_tol=1e-6), name
    for name, expected in TRUE_DRAFT.items():
        assert math.isclose(getattr(fit.draft, name), expected, rel_tol=1e-6), name


def test_fit_with_noise_stays_close_and_predicts_well():
    points = synthetic_points(np.random.default_rng(1), noise=0.01)
    fit = fit_calibration(points)
    assert fit.verify.knee_tokens == KNEE
    for name in ("intercept_s", "per_token_above_knee_s", "eager_s"):
        assert math.isclose(getattr(fit.verify, name), TRUE_VERIFY[name], rel_tol=0.15), name
    clean = synthetic_points()
    for point, truth in zip(points, clean):
        predicted, _ = fit.predict(CalibrationPoint.from_mapping(point))
        assert abs(predicted / truth["verify_s"] - 1) < 0.03


def test_fit_fixes_unidentifiable_terms_at_zero():
    points = [p | {"eager": False, "verify_s": p["verify_s"] - TRUE_VERIFY["eager_s"] * p["eager"]}
              for p in synthetic_points()]  # everything ran in one mode: the eager cost is unknowable
    fit = fit_calibration(points)
    assert fit.verify.knee_tokens == KNEE
    assert fit.verify.eager_s == 0.0 and "eager_s" in fit.fixed_zero


def write_synthetic(path: Path, points=None, **overrides):
    fields = dict(points=points if points is not None else synthetic_points(), hardware="cpu-2core",
                  model="qwen2.5-coder-1.5b", draft_model="qwen2.5-coder-0.5b", dtype="float32", tp=1,
                  software={"python": "3.11", "torch": "2.13.0"}, command="echo-run calibrate --test",
                  graph_buckets=[], kv_capacity_tokens=200_000, prefill_chunk_tokens=512,
                  step_overhead_s=1e-3, per_request_overhead_s=2e-5)
    return write_calibration(path, **{**fields, **overrides})


def test_calibration_round_trip_and_cost_model(tmp_path):
    path = tmp_path / "cal.json"
    written = write_synthetic(path)
    loaded = load_calibration(path)
    assert loaded == written
    raw = json.loads(path.read_text())
    assert raw["fit"]["verify_max_abs_rel_err"] < 1e-6 and "verify_rel_err" in raw["points"][0]
    cost = load_cost_model(calibration=path)
    assert cost.source == f"calibration:{path}" and cost.describe()["hardware"] == "cpu-2core"
    assert cost.graph_bucket(4) is None and cost.kv_capacity_tokens == 200_000
    bs, v, kv = 4, 40, 4000
    c = TRUE_VERIFY
    by_hand = (c["intercept_s"] + c["per_token_s"] * v + c["per_request_s"] * bs + c["per_kv_token_s"] * kv
               + c["per_attention_pair_s"] * v * (kv + v) / bs + c["eager_s"]  # no graphs: eager
               + 1e-3 + 2e-5 * bs)
    assert math.isclose(cost.verify_time(np.array([v]), bs, kv)[0], by_hand, rel_tol=1e-6)
    d = TRUE_DRAFT
    draft_by_hand = 3 * d["per_level_s"] + (bs + 2 * bs * 2) * d["per_token_s"] + 3 * kv * d["per_level_kv_token_s"]
    assert math.isclose(cost.draft_time(bs, 3, 2, kv), draft_by_hand, rel_tol=1e-6)
    with pytest.raises(CostModelError, match="hardware is 'cpu-2core'"):
        load_cost_model("h200", calibration=path)


def test_calibration_without_draft_timing_refuses_draft_steps(tmp_path):
    points = [p | {"draft_s": None} for p in synthetic_points()]
    cost = load_cost_model(calibration=write_synthetic(tmp_path / "ar.json", points).path)
    assert cost.draft_time(4, 0, 1) == 0.0
    with pytest.raises(CostModelError, match="no draft was timed"):
        cost.draft_time(4, 2, 1)


@pytest.mark.parametrize("edit, field", [
    (lambda d: d["points"][1].__setitem__("verify_s", float("nan")), "points[1].verify_s"),
    (lambda d: d["points"][2].__setitem__("kv_tokens", -5), "points[2].kv_tokens"),
    (lambda d: d["points"][0].__setitem__("draft_s", float("inf")), "points[0].draft_s"),
    (lambda d: d["fit"]["verify"].__setitem__("per_token_s", float("nan")), "fit.verify.per_token_s"),
    (lambda d: d["fit"]["verify"].__setitem__("per_token_s", -1e-6), "fit.verify.per_token_s"),
    (lambda d: d["overhead"].pop("step_s"), "overhead.step_s"),
    (lambda d: d.pop("command"), "command"),
    (lambda d: d.__setitem__("version", 2), "version"),
    (lambda d: d.__setitem__("graph_buckets", [8, 4]), "graph_buckets"),
])
def test_bad_calibration_files_name_file_and_field(tmp_path, edit, field):
    path = tmp_path / "cal.json"
    write_synthetic(path)
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # json writes NaN / Infinity literals, as a buggy writer might
    with pytest.raises(CostModelError) as error:
        load_cost_model(calibration=path)
    assert str(path) in str(error.value) and f"'{field}'" in str(error.value)


def test_write_calibration_refuses_nan_and_writes_nothing(tmp_path):
    points = synthetic_points()
    points[3]["verify_s"] = float("nan")
    path = tmp_path / "out" / "cal.json"
    with pytest.raises(CostModelError):
        write_synthetic(path, points)
    assert not path.exists()
    with pytest.raises(CostModelError, match="engine.kv_capacity_tokens"):
        write_synthetic(path, kv_capacity_tokens=0)
    assert not path.exists()


def test_malformed_points_are_named(tmp_path):
    points = synthetic_points()
    del points[2]["kv_tokens"]
    with pytest.raises(CostModelError, match=r"'points\[2\]\.kv_tokens'"):
        write_synthetic(tmp_path / "cal.json", points)
    with pytest.raises(CostModelError, match="lacks kv_tokens"):
        fit_calibration(points)
    with pytest.raises(CostModelError, match="V must be >= batch_size"):
        load_cost_model().verify_time(np.array([4, 8]), 8, 1000)
