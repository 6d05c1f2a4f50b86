"""`echo-sim run` end to end on a small written trace: the JSON fields, the ar baseline, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest

from echo_sim.cli.main import main
from echo_sim.config import SimConfig
from echo_sim.engine import simulate
from echo_sim.testing import random_trace
from echo_sim.traces.format import read_trace, write_trace

REQUIRED = ("policy", "concurrency", "requests", "output_tokens_per_s", "speedup_vs_ar", "mean_accepted_tokens",
            "verified_tokens_per_step", "waste", "ttft_p50", "tpot_p50", "tpot_p99", "sim_cpu_seconds",
            "acceptance_source", "cost_source")


@pytest.fixture(scope="module")
def trace_path(tmp_path_factory):
    trace = random_trace(np.random.default_rng(11), num_requests=4, output_len=(8, 20), width=3, depth=4)
    return str(write_trace(trace, tmp_path_factory.mktemp("t") / "small.trace.npz"))


def test_run_json_has_the_fields_and_the_ar_speedup(trace_path, capsys):
    code = main(["run", "--policy", "echo", "--concurrency", "3", "--requests", "12", "--trace", trace_path,
                 "--seed", "4", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert all(field in out for field in REQUIRED)
    assert out["policy"] == "echo" and out["concurrency"] == 3 and out["requests"] == 12
    assert "small.trace.npz (random -> random)" == out["acceptance_source"]
    assert out["cost_source"] == "fitted:h200/llama-3.1-8b" and out["cost_model"] == "fitted"
    assert (out["prefill_mode"], out["verify_graphs"], out["moe_routing"]) == ("separate", "token-buckets", "uniform")
    trace = read_trace(trace_path)
    config = SimConfig(policy="echo", concurrency=3, requests=12, seed=4, trace=trace_path)
    echo = simulate(config, trace).metrics["output_tokens_per_s"]
    ar = simulate(SimConfig(policy="ar", concurrency=3, requests=12, seed=4, trace=trace_path), trace)
    assert out["output_tokens_per_s"] == pytest.approx(echo)
    assert out["speedup_vs_ar"] == pytest.approx(echo / ar.metrics["output_tokens_per_s"])
    # the policy's own CPU time and the ar baseline's, separately (two simulations ran)
    assert out["sim_cpu_seconds"] > 0 and out["baseline_sim_cpu_seconds"] > 0


def test_run_text_summary(trace_path, capsys):
    assert main(["run", "--policy", "ar", "--rate", "50", "--requests", "5", "--trace", trace_path]) == 0
    text = capsys.readouterr().out
    assert "speedup vs ar" in text and "1.000x" in text and "poisson arrivals at 50.0 req/s" in text
    assert "ar baseline sim CPU    0.00 s" in text  # ar is its own baseline: no second simulation


@pytest.mark.parametrize("argv, message", [
    (["--policy", "echo", "--concurrency", "0"], "concurrency: must be a positive integer"),
    (["--policy", "nope", "--concurrency", "2"], "unknown policy 'nope'; known policies: ar,"),
    (["--policy", "echo", "--rate", "nan"], "rate: must be a positive finite number"),
    (["--policy", "echo", "--concurrency", "2", "--workload", "x"], "workload: unknown name 'x'"),
    (["--policy", "echo", "--concurrency", "2", "--hardware", "tpu"], "tpu"),
])
def test_bad_input_exits_nonzero_with_one_line(trace_path, capsys, argv, message):
    assert main(["run", *argv, "--trace", trace_path, "--requests", "3"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err and captured.err.count("\n") == 1


def test_missing_trace_is_an_error(tmp_path, capsys):
    assert main(["run", "--policy", "echo", "--concurrency", "2", "--trace", str(tmp_path / "no.trace.npz")]) == 2
    assert "trace: file not found" in capsys.readouterr().err
