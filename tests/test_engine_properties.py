"""Property tests of the engine with the real policies and the real cost model over random traces.

Every step a policy takes is recorded (RecordingPolicy) and replayed here independently: the test
walks each request's output position itself (greedy replay rules, TRACES.md), recomputes the
accepted depth by a per-node Python walk, and compares with what the engine logged.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from echo_sim.config import SimConfig
from echo_sim.cost.model import load_cost_model
from echo_sim.engine import build_simulation
from echo_sim.policies.registry import POLICY_NAMES, make_policy
from echo_sim.testing import RecordingPolicy, random_trace
from echo_sim.traces.beam import beam_batch_reference

COST = load_cost_model("h200", "llama-3.1-8b")


def walk_accepted(lattices, nodes, row) -> tuple[int, int]:
    """(accepted depth, deepest selected depth) of one request, node by node."""
    start, end = int(lattices.offsets[row]), int(lattices.offsets[row + 1])
    accepted = {}
    best = deepest = 0
    for local in range(end - start):
        i = start + local
        parent = int(lattices.parent[i])
        parent_ok = parent == -1 or accepted.get(parent, False)
        if nodes[i]:
            assert parent == -1 or nodes[start + parent], "selection is not prefix-closed"
            deepest = max(deepest, int(lattices.depth[i]))
        accepted[local] = bool(nodes[i] and lattices.on_path[i] and parent_ok)
        if accepted[local]:
            best = max(best, int(lattices.depth[i]))
    return best, deepest


@st.composite
def scenarios(draw, policies=POLICY_NAMES):
    trace_args = dict(
        num_requests=draw(st.integers(1, 4)), output_len=(2, draw(st.integers(2, 14))),
        width=draw(st.integers(1, 3)), depth=draw(st.integers(1, 4)),
        agreement=draw(st.sampled_from([0.3, 0.7, 0.95])),
    )
    load = draw(st.one_of(
        st.builds(lambda c: {"concurrency": c}, st.integers(1, 6)),
        st.builds(lambda r: {"rate": r}, st.sampled_from([5.0, 100.0, 1e4])),
    ))
    config = SimConfig(
        policy=draw(st.sampled_from(policies)), requests=draw(st.integers(1, 12)),
        seed=draw(st.integers(0, 3)), max_batch=draw(st.integers(1, 6)),
        prefill_chunk=draw(st.sampled_from([16, 48, 8192])), step_log=True, **load,
    )
    return draw(st.integers(0, 2**16)), trace_args, config


def run_recorded(trace_seed, trace_args, config):
    trace = random_trace(np.random.default_rng(trace_seed), **trace_args)
    policy = RecordingPolicy(make_policy(config.policy))
    simulation = build_simulation(config, trace=trace, policy=policy, cost=COST).run()
    return trace, policy, simulation.result()


@pytest.mark.parametrize("policy_name", POLICY_NAMES)
@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_replay_invariants(policy_name, data):
    trace, policy, result = run_recorded(*data.draw(scenarios(policies=(policy_name,))))
    requests, steps = result.requests, result.steps
    # every request commits exactly its output length (y_0 by prefill, the rest by decode steps)
    assert requests["finish"].notna().all()
    assert (requests["decode_tokens"] + 1 == requests["output_len"]).all()
    assert steps["committed"].sum() == (requests["output_len"] - 1).sum()
    decode = steps[steps["batch_size"] > 0].reset_index(drop=True)
    assert len(decode) == len(policy.steps)
    position = {}  # request -> output position t, walked independently
    oracle = make_policy("oracle:shape=full")  # the full lattice: a ceiling at every position
    for call, (_, step) in zip(policy.steps, decode.iterrows()):
        lattices, selection, context = call["lattices"], call["selection"], call["context"]
        ids = step["requests"]
        t = np.array([position.setdefault(r, 1) for r in ids])
        trace_req = requests["trace_request"].to_numpy()[ids]
        global_pos = trace.position_offsets[trace_req] + t % trace.output_len[trace_req]
        depth_cap = min(context.draft.depth, trace.depth)
        expected = trace.lattice_batch(global_pos, max_depth=depth_cap) if depth_cap > 0 else None
        if expected is not None and context.draft.width < trace.width:  # what a width-k' drafter grows
            expected = beam_batch_reference(expected, context.draft.width, depth_cap)[0]
        if expected is not None:  # the engine read the lattices at the positions we walked
            assert np.array_equal(lattices.offsets, expected.offsets)
            assert np.array_equal(lattices.token, expected.token)
        drafted = selection.chain.sum() if selection.chain is not None else selection.nodes.sum()
        assert step["verify_tokens"] == len(ids) + drafted + selection.padding  # V = roots + selected (+ pad)
        full = trace.lattice_batch(global_pos)
        best = oracle.select(full, context).nodes
        for row, request in enumerate(ids):
            if selection.chain is not None:
                chain = int(selection.chain[row])
                accepted, deepest = min(int(lattices.spine_run[row]), chain), chain
            else:
                accepted, deepest = walk_accepted(lattices, selection.nodes, row)
                # per position: oracle's accepted depth at the same lattice is a ceiling
                assert walk_accepted(full, best, row)[0] >= accepted
            assert accepted <= deepest
            assert step["accepted_depth"][row] == accepted
            committed = min(accepted + 1, int(requests["output_len"][request]) - position[request])
            position[request] += committed
    assert all(position[r] == requests["output_len"][r] for r in position)
    if policy.name == "ar":
        assert result.metrics["mean_accepted_tokens"] == 1.0
        assert result.metrics["waste"] == 0.0


@settings(max_examples=8, deadline=None)
@given(scenarios())
def test_identical_seeds_identical_results(scenario):
    trace_seed, trace_args, config = scenario
    first = run_recorded(trace_seed, trace_args, config)[2]
    second = run_recorded(trace_seed, trace_args, config)[2]
    pd.testing.assert_frame_equal(first.requests, second.requests)
    pd.testing.assert_frame_equal(first.steps, second.steps)
    timing = {"sim_cpu_seconds"}
    assert {k: v for k, v in first.metrics.items() if k not in timing} == pytest.approx(
        {k: v for k, v in second.metrics.items() if k not in timing}, nan_ok=True)


def test_interleaved_simulations_do_not_interact():
    trace = random_trace(np.random.default_rng(3), num_requests=4, output_len=(6, 16), width=3, depth=4)
    configs = [SimConfig(policy="echo", concurrency=3, requests=12, seed=1, step_log=True),
               SimConfig(policy="dynamic", rate=200.0, requests=10, seed=2, step_log=True)]
    alone = [build_simulation(c, trace=trace, cost=COST).run().result() for c in configs]
    together = [build_simulation(c, trace=trace, cost=COST) for c in configs]
    for until in np.linspace(0.01, 1.0, 40):  # alternate small slices of simulated time
        for simulation in together:
            if not simulation.done and until > simulation.env.now:
                simulation.run(until=until)
    results = [simulation.run().result() for simulation in together]
    for one, other in zip(alone, results):
        pd.testing.assert_frame_equal(one.requests, other.requests)
        pd.testing.assert_frame_equal(one.steps, other.steps)


class ShapeRecorder:
    """The real cost model, keeping every StepShape the engine prices."""

    def __init__(self, cost):
        self.cost, self.shapes = cost, []

    def __getattr__(self, name):
        return getattr(self.cost, name)

    def components(self, shape, draft_seconds=None):
        self.shapes.append(shape)
        return self.cost.components(shape, draft_seconds)


def test_step_durations_are_the_cost_models_step_time():
    trace = random_trace(np.random.default_rng(5), num_requests=3, width=2, depth=3)
    cost = ShapeRecorder(COST)
    result = build_simulation(SimConfig(policy="echo", concurrency=2, requests=6, step_log=True),
                              trace=trace, cost=cost).run().result()
    # the cost model's step time, with the draft charged as recorded: echo's ragged (expand-gated)
    # levels and catch-up tokens are CostModel.ragged_draft_time, not the uniform shape's
    expected = [COST.step_time(shape) - COST.components(shape)["draft"] for shape in cost.shapes]
    expected = np.asarray(expected) + result.steps["draft_time"].to_numpy()
    assert np.allclose(result.steps["end"] - result.steps["start"], expected, rtol=1e-12)
    assert (result.steps["draft_time"][result.steps["batch_size"] > 0] > 0).all()
