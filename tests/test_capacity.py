"""Capacity search: SLO parsing, the instability measure, and a capacity known by hand.

The known capacity: a clock with a constant 10 ms step, `ar` (one token per request-step), every
output 5 tokens (1 from prefill + 4 decode steps) and 4 batch slots. A slot then serves one request
per 5 steps = 50 ms, so the server completes at most mu = 4 / 0.05 = 80 requests/s, and TPOT is
exactly 10 ms at any load. With a loose latency target only the instability test can fail: it fails
once the queue absorbs more than UNSTABLE_GROWTH of the arrivals, i.e. above mu / (1 - 0.05) = 84.2,
up to the Poisson count noise of the measured window (relative sd 1/sqrt(measured arrivals)).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from echo_sim import capacity
from echo_sim.config import SimConfig
from echo_sim.cost.graphs import TokenBucketGraphs
from echo_sim.slo import SLOError, attainment, meets, parse_slo
from echo_sim.testing import random_trace

STEP_S, SLOTS, OUTPUT = 0.01, 4, 5
MU = SLOTS / (OUTPUT * STEP_S)  # 80 requests/s


class ConstantStep(TokenBucketGraphs):
    source = "test:constant-10ms"
    graph_buckets = (1, 2, 4, 8, 16)

    def step_time(self, shape) -> float:
        return STEP_S

    def components(self, shape, draft_seconds=None) -> dict:
        return {"overhead": STEP_S, **({} if draft_seconds is None else {"draft": draft_seconds})}

    def verify_time(self, verify_tokens, batch_size, kv_tokens, eager=False):
        return np.full(np.shape(verify_tokens), STEP_S)

    def draft_time(self, batch_size, depth, width, kv_tokens=0, extend_tokens=None) -> float:
        return 0.0

    def ragged_draft_time(self, batch_size, level_tokens, kv_tokens=0) -> float:
        return 0.0

    def prefill_time(self, prefill_tokens, prefill_context=0, with_draft=True) -> float:
        return 0.0  # prompts ride in the constant step

    def graph_bucket(self, verify_tokens):
        return next((b for b in self.graph_buckets if b >= verify_tokens), None)


def test_slo_parsing_units_and_errors():
    targets = parse_slo("ttft_p90=1s, tpot_p99=50ms,e2e_p50<=2.5s")
    assert [(t.field, t.limit_s) for t in targets] == [("ttft_p90", 1.0), ("tpot_p99", 0.05), ("e2e_p50", 2.5)]
    assert str(targets[1]) == "tpot_p99<=50ms"
    for bad, message in (("tpot_p99=50", "needs a unit"), ("tpot_p95=50ms", "unknown latency"),
                         ("ttft=1s", "cannot parse"), ("tpot_p99=0ms", "positive"), ("", "no targets"),
                         ("tpot_p99=1s,tpot_p99=2s", "twice"), ("tpot_p99=50us", "needs a unit")):
        with pytest.raises(SLOError, match=message):
            parse_slo(bad)


def test_meets_and_attainment():
    targets = parse_slo("ttft_p90=1s,tpot_p99=50ms")
    assert meets({"ttft_p90": 1.0, "tpot_p99": 0.05}, targets)
    assert not meets({"ttft_p90": 1.0, "tpot_p99": 0.051}, targets)
    assert not meets({"ttft_p90": float("nan"), "tpot_p99": 0.01}, targets)
    # 4 requests: TTFT 0.5/2/0.5/0.5 s, TPOT 10/10/100/10 ms -> 2 of 4 meet both
    requests = pd.DataFrame({"arrival": [0.0] * 4, "first_token": [0.5, 2.0, 0.5, 0.5],
                             "output_len": [11, 11, 11, 11],
                             "finish": [0.6, 2.1, 1.5, 0.6]})
    assert attainment(requests, targets) == pytest.approx(0.5)


def test_queue_growth_is_the_share_of_arrivals_left_waiting():
    n = 200
    arrival = np.arange(n, dtype=float)  # one arrival per second
    stable = pd.DataFrame({"arrival": arrival, "admitted": arrival})
    assert capacity.queue_growth(stable, 20, 180) == pytest.approx(0.0, abs=1e-12)
    half = pd.DataFrame({"arrival": arrival, "admitted": arrival * 2})  # served at half the arrival rate
    assert capacity.queue_growth(half, 20, 180) == pytest.approx(0.5, abs=0.01)


def hand_search(slo: str, seeds=(0, 1), requests=1500, **search):
    trace = random_trace(np.random.default_rng(7), num_requests=6, output_len=(OUTPUT, OUTPUT))
    base = SimConfig(policy="ar", rate=1.0, requests=requests, max_batch=SLOTS, trace="unused.npz")
    cost = ConstantStep()
    evaluate = lambda probes: [capacity.measure(p, trace, cost) for p in probes]  # noqa: E731
    searches, native = capacity.search_capacity(base, ["ar"], list(seeds), parse_slo(slo), evaluate,
                                                start=10.0, tolerance=0.02, **search)
    assert native is None
    return searches


def test_search_finds_the_hand_computed_capacity():
    for search in hand_search("e2e_p50=100s"):
        # passing within [0.95 mu, mu / 0.95] (finite-run noise near critical load), failing above it,
        # failing only for instability (latency targets are loose), bracket within the tolerance
        noise = 3 / np.sqrt(search.probes[-1]["measured_requests"])
        assert MU * (1 - noise) <= search.passing <= MU / (1 - capacity.UNSTABLE_GROWTH) * (1 + noise)
        assert search.failing / search.passing - 1 <= 0.02
        assert search.failing_reason == "unstable"
        assert all(r["tpot_p99"] == pytest.approx(STEP_S) for r in search.probes)


def test_search_with_an_unmeetable_target_finds_no_capacity():
    (search,) = hand_search("tpot_p99=9ms", seeds=(0,), requests=300, min_load=1.0)
    assert search.passing is None and search.failing_reason == "tpot_p99"
    assert search.failing == pytest.approx(10.0 / 8)  # halved down to the lowest allowed rate


def test_capacity_cli_writes_tables_resumes_and_rejects_bad_input(tmp_path, capsys):
    from echo_sim.cli.main import main
    from echo_sim.traces.format import write_trace

    trace = tmp_path / "small.trace.npz"
    write_trace(random_trace(np.random.default_rng(5), num_requests=5, output_len=(8, 16)), trace)
    out = tmp_path / "out"
    command = ["capacity", "--trace", str(trace), "--slo", "tpot_p99=8ms", "--policies", "ar,static-chain",
               "--requests", "120", "--start", "64", "--tolerance", "0.1", "--jobs", "1", "--out", str(out)]
    assert main(command) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "capacity.csv")
    assert set(table["policy"]) == {"ar", "static-chain"} and (table["passing"] < table["failing"]).all()
    assert (out / "capacity.png").read_bytes()[:4] == b"\x89PNG"
    assert "capacity under tpot_p99<=8ms" in printed and "python -m sglang.launch_server" in printed
    probes = sorted(p.name for p in (out / "points").glob("*.json"))
    assert main(command) == 0  # resumed: every probe from its point file, nothing new
    assert sorted(p.name for p in (out / "points").glob("*.json")) == probes
    assert pd.read_csv(out / "capacity.csv").equals(table)
    for bad in (["--slo", "tpot_p99=8"], ["--slo", "tpot_p99=8ms", "--arrival", "closed"],
                ["--slo", "tpot_p99=8ms", "--warmup", "1.5"]):
        fresh = tmp_path / "bad"
        assert main(["capacity", "--trace", str(trace), *bad, "--out", str(fresh)]) == 2
        assert not fresh.exists()


def test_replay_is_searched_as_a_time_scale_and_reported_as_its_mean_rate():
    from echo_sim.workload import build_stream, read_workload

    native = capacity.native_replay_rate("azure-conv", 500)
    recorded = read_workload("azure-conv")["arrival"].to_numpy()[:500]
    assert native == pytest.approx(499 / (recorded[-1] - recorded[0]))
    base = SimConfig(policy="ar", rate=1.0, arrival="replay", workload="azure-conv", requests=500)
    config = capacity.probe_config(base, "echo", 0, 3.0, native)  # three times the recorded speed
    stream = build_stream("azure-conv", 500, 0, np.array([10]), np.array([10]), "replay", config.rate)
    assert stream.arrival == pytest.approx((recorded - recorded[0]) / 3.0)
    search = capacity.Search("echo", 0, 1.0, 0.02, 0.1, 10.0, passing=3.0, failing=3.05)
    row = capacity.capacity_table([search], native).iloc[0]
    assert (row["time_scale"], row["capacity"], row["failing"]) == pytest.approx((3.0, 3 * native, 3.05 * native))
