"""`echo-run calibrate | live | validate` end to end on a tiny random pair saved to disk (CPU, float64).

What must hold exactly whatever the timing noise: every live output equals the trace's greedy
tokens, and the simulated mean accepted tokens equal the measured ones (same lattices, same policy).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from echo_runtime.cli import main as echo_run  # noqa: E402
from echo_sim.cost.model import load_cost_model  # noqa: E402
from runtime_support import tiny_pair_models, tiny_tokenizer  # noqa: E402

PROMPTS = ["write a sort in c", "hi there", "explain kv caches", "what is 2"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pair_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    tokenizer = tiny_tokenizer()
    for name, model in zip(("target", "draft"), tiny_pair_models(48, noise=0.05)):
        model.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    (root / "question.jsonl").write_text("".join(
        json.dumps({"question_id": 80 + i, "turns": [text]}) + "\n" for i, text in enumerate(PROMPTS)))
    return root


def models(root):
    return ["--target", str(root / "target"), "--target-gguf", "", "--draft", str(root / "draft"),
            "--draft-gguf", "", "--dtype", "float64"]


@pytest.fixture(scope="module")
def calibration(pair_dir):
    out = pair_dir / "cal" / "tiny.json"
    assert echo_run(["calibrate", *models(pair_dir), "--batch-sizes", "1,2", "--tokens-per-request", "1,4",
                     "--kv-lens", "16,32", "--draft-depths", "2,3", "--curve-tokens", "1,2,3", "--prefill-tokens", "8,12",
                     "--repeats", "1",
                     "--warmup", "0", "--overhead-steps", "2", "--out", str(out)]) == 0
    return out


def test_calibration_file_is_complete_and_loads(calibration):
    data = json.loads(calibration.read_text())
    assert len(data["points"]) == 2 * 2 * 2 + 2 + 2  # bs × kv × v, + curve v = 2, 3 (1 is in the grid), + 2 prefills
    # the curve points also time one draft level over v pending tokens of min(v, 2) requests (a draft extend)
    assert [(p["verify_tokens"], p["draft_depth"], p.get("draft_first_tokens"), p.get("draft_batch_size"))
            for p in data["points"] if p["batch_size"] == 1 and p["kv_tokens"] == 16 and p["verify_tokens"] in (2, 3)
            ] == [(2, 1, 2, 2), (3, 1, 3, 2)]
    assert set(data["fit"]["draft"]["level_curve"]["knots"]) == {1, 2, 3, 4, 8}  # bs, bs·k and the extends
    assert data["fit"]["verify"]["token_curve"]["knots"] == [1, 2, 3, 4, 8]  # prefills have their own curve
    assert data["fit"]["verify"]["prefill_curve"]["knots"] == [8, 12]
    assert [p["verify_tokens"] for p in data["points"] if "draft_prefill_s" in p] == [8, 12]
    assert data["command"].startswith("echo-run calibrate") and data["software"]["torch"]
    assert all(p["verify_s"] > 0 and p["verify_rel_err"] is not None for p in data["points"])
    assert all(p["draft_s"] > 0 for p in data["points"] if p["draft_depth"] > 0)
    assert not (calibration.parent / "tiny.json.no-overhead.json").exists()
    cost = load_cost_model(calibration=str(calibration))
    assert cost.source.startswith("calibration:")


def test_validate_outputs_are_greedy_and_mat_is_exact(pair_dir, calibration, capsys):
    out = pair_dir / "val"
    argv = ["validate", *models(pair_dir), "--prompts", str(pair_dir / "question.jsonl"), "--limit", "4",
            "--max-new-tokens", "8", "--width", "3", "--depth", "3", "--policies", "ar,static,echo",
            "--concurrency", "1,2", "--calibration", str(calibration), "--out", str(out), "--json"]
    assert echo_run(argv) == 0
    captured = capsys.readouterr()
    assert "resuming" not in captured.err and "warning" not in captured.err  # fresh, calibrated here
    rows = json.loads(captured.out.strip().splitlines()[-1])["rows"]
    assert [(r["policy"], r["concurrency"]) for r in rows] == [(p, c) for p in ("ar", "static", "echo") for c in (1, 2)]
    for row in rows:
        assert row["outputs_match_trace"], row
        assert row["mat_error_pct"] == 0.0, row
        assert np.isfinite(row["throughput_error_pct"]) and np.isfinite(row["tpot_error_pct"])
        assert np.isfinite(row["step_time_model_error_pct"]) and row["verify_seconds_measured"] > 0
        assert row["on_path_cut_count"] <= row["inexact_read_count"]  # counted; MAT above is exact anyway
        # the calibration's probe points re-timed around the live run (bs 1 and 2, 1 and 4 tokens per request)
        assert row["speed_ratio_before"] > 0 and row["speed_ratio_after"] > 0, row
        at_speed = row["throughput_simulated"] / ((row["speed_ratio_before"] + row["speed_ratio_after"]) / 2)
        assert row["throughput_error_at_probe_speed_pct"] == pytest.approx(
            100 * (at_speed / row["throughput_measured"] - 1))
    steps = (out / "rows" / "echo_c2.steps.csv").read_text().splitlines()
    assert "predicted_verify" in steps[0] and "verify_s" in steps[0] and "draft_levels" in steps[0] and len(steps) > 2
    assert any(r["mat_measured"] > 1.2 for r in rows)  # speculation accepted tokens
    assert (out / "validation.md").read_text().startswith("| policy |")
    (out / "rows" / "ar_c1.json").write_text((out / "rows" / "ar_c1.json").read_text().replace(
        '"policy": "ar"', '"policy": "ar", "kept": true'))
    assert echo_run(argv) == 0  # resumes: finished rows are read back, not recomputed
    captured = capsys.readouterr()
    assert f"resuming: 6 of 6 rows already measured in {out}" in captured.err
    rows = json.loads(captured.out.strip().splitlines()[-1])["rows"]
    assert rows[0].get("kept") is True


def test_live_json_has_the_simulators_fields(pair_dir, calibration, capsys):
    argv = ["live", *models(pair_dir), "--prompts", str(pair_dir / "question.jsonl"), "--policy", "static",
            "--concurrency", "2", "--max-new-tokens", "6", "--width", "3", "--depth", "3",
            "--calibration", str(calibration), "--json"]
    assert echo_run(argv) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("policy", "concurrency", "requests", "output_tokens_per_s", "mean_accepted_tokens",
                "verified_tokens_per_step", "waste", "ttft_p50", "tpot_p50", "tpot_p99", "cost_source"):
        assert key in metrics, key
    assert metrics["requests"] == 4 and metrics["output_tokens_per_s"] > 0 and metrics["mean_accepted_tokens"] >= 1


def test_live_timing_only_mode_replays_a_trace(tmp_path, capsys):
    from echo_sim.testing import random_trace
    from echo_sim.traces.format import write_trace

    path = tmp_path / "random.trace.npz"
    write_trace(random_trace(np.random.default_rng(5), num_requests=3, width=2, depth=3, vocab=40), path)
    argv = ["live", "--random-shape", "tiny-llama", "--trace", str(path), "--policy", "echo",
            "--concurrency", "2", "--hardware", "h200", "--model", "llama-3.1-8b", "--json"]
    assert echo_run(argv) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["acceptance_source"] == f"trace:{path}" and metrics["requests"] == 3


@pytest.mark.parametrize("argv, message", [
    (["live", "--random-shape", "tiny-llama", "--policy", "nope", "--concurrency", "1"], "unknown policy"),
    (["live", "--random-shape", "tiny-llama", "--concurrency", "1"], "--trace"),
    (["calibrate", "--random-shape", "tiny-llama", "--repeats", "0"], "--repeats"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message, capsys):
    assert echo_run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_calibrate_random_shape_writes_a_file_the_simulator_reads(tmp_path):
    out = tmp_path / "tiny-llama.json"
    assert echo_run(["calibrate", "--random-shape", "tiny-llama", "--batch-sizes", "1,3", "--tokens-per-request", "2,5",
                     "--kv-lens", "20", "--draft-depths", "2", "--curve-tokens", "2", "--prefill-tokens", "9", "--repeats", "2",
                     "--warmup", "0", "--overhead-steps", "2", "--max-batch-kv-tokens", "40", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["model"] == "tiny-llama" and "random" in data["draft_model"]
    assert [p["batch_size"] for p in data["points"]] == [1, 1, 1]  # bs 3 x KV 20 = 60 > 40: skipped
    assert data["software"]["clock"] == "cpu"
    assert "--max-batch-kv-tokens 40" in data["command"]
    assert load_cost_model(calibration=str(out)).verify_time([1, 4], 1, 20).shape == (2,)
    log = out.with_name(out.name + ".measurements.jsonl")
    before = log.read_text().splitlines()
    assert echo_run(["calibrate", "--random-shape", "tiny-llama", "--batch-sizes", "1,3", "--tokens-per-request", "2,5",
                     "--kv-lens", "20", "--draft-depths", "2", "--curve-tokens", "2", "--prefill-tokens", "9", "--repeats", "3",
                     "--warmup", "0", "--overhead-steps", "2", "--max-batch-kv-tokens", "40", "--out", str(out)]) == 0
    after = log.read_text().splitlines()
    assert after[: len(before)] == before  # resumed: earlier timings kept, one more run per shape
    assert len(after) - len(before) == (len(before) - 1) // 2  # 5 shapes (verify ×3, draft, draft prefill): 2 runs each, then a 3rd
    again = ["calibrate", "--random-shape", "tiny-llama", "--batch-sizes", "1,3", "--tokens-per-request", "2,5",
             "--kv-lens", "20", "--draft-depths", "2", "--curve-tokens", "2", "--prefill-tokens", "9", "--repeats", "3",
             "--warmup", "0", "--overhead-steps", "2", "--max-batch-kv-tokens", "40", "--out", str(out)]
    assert echo_run(again) == 0 and log.read_text().splitlines() == after  # complete: nothing re-measured
    setup = json.loads(after[0])
    setup["setup"]["machine"]["cpu_model"] = "another CPU"
    log.write_text("\n".join([json.dumps(setup)] + after[1:]) + "\n")
    assert echo_run(again) == 2  # another machine's timings are never resumed


def test_drift_probes_are_the_calibrations_own_grid_points(calibration):
    from echo_runtime.drift import probe_points
    from echo_sim.cost.calibration_file import load_calibration

    probes = probe_points(load_calibration(str(calibration)))
    # grid 1,2 requests x 1,4 tokens x KV 16,32: the shortest KV, both batch sizes, both token counts
    assert sorted((p.batch_size, p.verify_tokens, p.kv_tokens) for p in probes) == [(1, 1, 16), (1, 4, 16), (2, 2, 32), (2, 8, 32)]
    assert all(p.draft_s > 0 for p in probes)
