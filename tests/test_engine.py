"""Engine unit tests on hand-built inputs with hand-computed expectations.

Timing tests use a clock whose step time is known by hand (ConstantCost: 1 s per step, or 1 s plus
1 ms per prefill token), so TTFT and admission times can be written down without the cost model.
The real cost model and policies are exercised by test_engine_properties.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

from echo_sim.config import SimConfig, SimConfigError
from echo_sim.engine import Simulation, build_simulation
from echo_sim.traces.reader import on_path_acceptance
from echo_sim.metrics import selected_extent
from echo_sim.cost.graphs import TokenBucketGraphs
from echo_sim.policies.base import DraftShape, Selection
from echo_sim.policies.knobs import KnobbedPolicy
from echo_sim.testing import random_trace
from echo_sim.traces.format import TraceSet
from echo_sim.trees import LatticeBatch
from echo_sim.workload import RequestStream


class ConstantCost(TokenBucketGraphs):
    """1 s per step + per_prefill_token s per prefill token; records every StepShape it prices."""

    source = "test:constant"
    graph_buckets = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

    def __init__(self, per_prefill_token: float = 0.0):
        self.per_prefill_token = per_prefill_token
        self.shapes = []

    def step_time(self, shape) -> float:
        return sum(self.components(shape).values())

    def components(self, shape, draft_seconds=None) -> dict:
        self.shapes.append(shape)
        return {"overhead": 1.0, "prefill": self.per_prefill_token * shape.prefill_tokens,
                **({} if draft_seconds is None else {"draft": draft_seconds})}

    def verify_time(self, verify_tokens, batch_size, kv_tokens, eager=False):
        return np.ones(np.shape(verify_tokens))

    def draft_time(self, batch_size, depth, width, kv_tokens=0) -> float:
        return 0.0

    def ragged_draft_time(self, batch_size, level_tokens, kv_tokens=0) -> float:
        return 0.0

    def prefill_time(self, prefill_tokens, prefill_context=0, with_draft=True) -> float:
        return self.per_prefill_token * prefill_tokens

    def graph_bucket(self, verify_tokens):
        return next((b for b in self.graph_buckets if b >= verify_tokens), None)


@dataclass
class SelectAll(KnobbedPolicy):
    """Stand-in tree policy: verifies every drafted node (prefix-closed by construction)."""

    name = "select-all"
    draft = DraftShape(depth=3, width=2)

    def select(self, lattices, context):
        return Selection(nodes=np.ones(lattices.num_nodes, dtype=bool))


@dataclass
class SelectNone(SelectAll):
    name = "select-none"
    draft = DraftShape(depth=0, width=1)

    def select(self, lattices, context):
        return Selection(nodes=np.zeros(lattices.num_nodes, dtype=bool))


def make_simulation(trace, prompt, output, cost, policy=None, **config) -> Simulation:
    config.setdefault("kv_capacity_tokens", 10**9)
    """A closed-loop simulation over an explicit stream (request i replays trace request i % R)."""
    prompt = np.asarray(prompt, dtype=np.int64)
    stream = RequestStream("test", prompt, np.asarray(output, dtype=np.int64),
                           np.arange(len(prompt)) % trace.num_requests)
    config = SimConfig(**{"concurrency": len(prompt), **config})
    return Simulation(config, trace, policy or SelectNone(), cost, stream)


@pytest.fixture(scope="module")
def trace() -> TraceSet:
    return random_trace(np.random.default_rng(7), num_requests=3, output_len=(6, 10), width=2, depth=3)


def test_chunked_prefill_spreads_prompts_and_sets_ttft(trace):
    # chunk 1000: step 1 prefills A's 600 + 400 of B; step 2 the rest of B (300, 400 cached) and
    # 700 of C; step 3 C's last 500 (700 cached). First tokens at the end of steps 1, 2, 3.
    cost = ConstantCost()
    sim = make_simulation(trace, [600, 700, 1200], [3, 3, 3], cost, prefill_chunk=1000).run()
    log = sim.result().requests
    assert log["first_token"].tolist() == [1.0, 2.0, 3.0]
    assert [(s.prefill_tokens, s.prefill_context) for s in cost.shapes[:3]] == [(1000, 0), (1000, 400), (500, 700)]
    # A decodes from step 2: ar commits one token per step, output 3 = y0 + 2 decode steps
    assert log["finish"].tolist() == [3.0, 4.0, 5.0]
    assert cost.shapes[1].batch_size == 1 and cost.shapes[2].batch_size == 2


def test_prefill_cost_joins_the_step(trace):
    cost = ConstantCost(per_prefill_token=0.001)
    sim = make_simulation(trace, [500], [1], cost, prefill_chunk=200).run()
    # 200 + 200 + 100 prompt tokens: steps of 1.2, 1.2, 1.1 s; output 1 finishes at its first token
    assert sim.result().requests["first_token"].iloc[0] == pytest.approx(3.5)
    assert sim.result().requests["finish"].iloc[0] == pytest.approx(3.5)


def test_kv_capacity_limits_admission(trace):
    # each request reserves 50 + 5 = 55 KV tokens; capacity 120 holds two at a time
    sim = make_simulation(trace, [50] * 5, [5] * 5, ConstantCost(), kv_capacity_tokens=120).run()
    log = sim.result().requests
    times = np.union1d(log["admitted"], log["finish"])
    running = [int(np.sum((log["admitted"] <= t) & (log["finish"] > t))) for t in times]
    assert max(running) == 2
    # the third request waits for the first finish (5 steps: prefill + 4 decode steps)
    assert log["admitted"].tolist()[:3] == [0.0, 0.0, 5.0]
    assert (log["admitted"] >= log["arrival"]).all()


def test_max_batch_serialises(trace):
    sim = make_simulation(trace, [10, 10, 10], [2, 2, 2], ConstantCost(), max_batch=1).run()
    log = sim.result().requests
    assert log["admitted"].tolist() == [0.0, 2.0, 4.0]
    assert log["finish"].tolist() == [2.0, 4.0, 6.0]


def test_request_larger_than_kv_cache_is_an_error(trace):
    with pytest.raises(SimConfigError, match="request 1"):
        make_simulation(trace, [10, 500], [5, 5], ConstantCost(), kv_capacity_tokens=100)


def test_closed_loop_keeps_concurrency_clients(trace):
    sim = make_simulation(trace, [10] * 6, [4] * 6, ConstantCost(), concurrency=2)
    sim.run()
    log = sim.result().requests
    # request i + 2 is sent the moment request i finishes (zero think time)
    finishes = np.sort(log["finish"].to_numpy())
    assert log["arrival"].tolist()[:2] == [0.0, 0.0]
    assert np.allclose(np.sort(log["arrival"].to_numpy())[2:], finishes[:4])


@pytest.mark.parametrize("output_len", [None, 31])
def test_select_all_accepts_the_on_path_depth(trace, output_len):
    # verifying every node accepts exactly the lattice's on-path depth at each step; an output
    # longer than the trace request (31 > L) reads position t mod L
    length = int(trace.output_len[0])
    output_len = output_len or length
    sim = make_simulation(trace, [10], [output_len], ConstantCost(), policy=SelectAll(), step_log=True).run()
    steps = sim.result().steps
    decode = steps[steps["batch_size"] > 0]
    assert decode["accepted"].tolist() == decode["oracle_depth"].tolist()
    position, expected = 1, []
    while position < output_len:  # walk the trace by hand: depth = on-path nodes at t mod L
        lattice = trace.lattice_batch(np.array([position % length]), max_depth=3)
        depth = int(lattice.on_path.sum())
        expected.append(depth)
        position += min(depth + 1, output_len - position)
    assert decode["accepted"].tolist() == expected
    assert sim.result().requests["decode_tokens"].iloc[0] == output_len - 1


def test_on_path_depth_and_selected_extent_hand_built():
    # request 0: root children a(on), b; a's child c(on); request 1: one node, off path
    lattices = LatticeBatch(
        offsets=np.array([0, 3, 4]), token=np.array([1, 2, 3, 4], dtype=np.int32),
        parent=np.array([-1, -1, 0, -1], dtype=np.int32), depth=np.array([1, 1, 2, 1], dtype=np.int32),
        cond_prob=np.full(4, 0.5, dtype=np.float32), score=np.array([0.5, 0.4, 0.25, 0.3], dtype=np.float32),
        on_path=np.array([True, False, True, False]), spine_run=np.array([2, 0], dtype=np.int32),
    )
    accepted, accepted_depth, oracle = on_path_acceptance(lattices, np.array([True, True, False, True]))
    assert oracle.tolist() == [2, 0] and accepted_depth.tolist() == [1, 0]
    assert accepted.tolist() == [True, False, False, False]
    depth, width = selected_extent(lattices, Selection(nodes=np.array([True, True, False, True])))
    assert depth.tolist() == [1, 1] and width.tolist() == [2, 1]
    depth, width = selected_extent(lattices, Selection(nodes=np.zeros(4, bool), chain=np.array([3, 0])))
    assert depth.tolist() == [3, 0] and width.tolist() == [1, 0]


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(SimConfigError, match="concurrency"):
        SimConfig(concurrency=0).validate_load()
    with pytest.raises(SimConfigError, match="exactly one"):
        SimConfig().validate_load()
    with pytest.raises(SimConfigError, match="rate"):
        SimConfig(rate=float("nan")).validate_load()
    with pytest.raises(SimConfigError, match="trace: file not found"):
        SimConfig(concurrency=1, trace=str(tmp_path / "missing.trace.npz")).validate_inputs()
    with pytest.raises(ValueError, match="known: trace, sharegpt"):
        SimConfig(concurrency=1, workload="nope").validate_inputs(need_trace_file=False)
    with pytest.raises(ValueError, match="no arrival times"):
        SimConfig(rate=1.0, arrival="replay", workload="sharegpt").validate_inputs(need_trace_file=False)


def test_build_simulation_rejects_unknown_policy(trace):
    with pytest.raises(ValueError, match="known policies"):
        build_simulation(SimConfig(policy="nope", concurrency=1), trace=trace, cost=ConstantCost())


def test_results_serialise(trace, tmp_path):
    # the sweep writes metrics as JSON and the step log as Parquet (list columns included)
    from echo_sim.engine import simulate

    result = simulate(SimConfig(policy="echo", concurrency=2, requests=5, step_log=True), trace)
    assert all(type(v) in (str, int, float, bool, type(None)) for v in result.metrics.values())
    assert json.loads(json.dumps(result.metrics))["requests"] == 5
    result.steps.to_parquet(tmp_path / "steps.parquet")
    back = pd.read_parquet(tmp_path / "steps.parquet")
    assert list(back["requests"].iloc[-1]) == result.steps["requests"].iloc[-1]
    assert {"time_prefill", "time_draft", "time_verify", "time_overhead"} <= set(back.columns)
    plain = simulate(SimConfig(policy="echo", concurrency=2, requests=5), trace)
    assert plain.steps is None
    assert plain.requests.equals(result.requests)  # logging changes nothing
