"""The engine-side fast paths equal the references they replace: precomputed on-path chains
(chain_acceptance) against the on-path walk and trees.accepted_nodes, the compacted beam tables'
chains against the reference beam, the column step log against step_frame of StepRecord objects,
the per-row request counters against the step table, and the cost model's plain-float paths
against its numpy paths."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echo_sim.config import SimConfig
from echo_sim.cost.model import StepShape, load_cost_model
from echo_sim.cost.roofline import _chunk_forward
from echo_sim.cost.serving import ServingKnobs
from echo_sim.engine import simulate
from echo_sim.metrics import STEP_BLOCK, StepLog
from echo_sim.step import StepRecord, step_frame
from echo_sim.testing import random_trace
from echo_sim.traces.beam import beam_batch_reference, on_path_chains
from echo_sim.traces.reader import FEW_ON_PATH, LatticeReader, _chain_few, chain_acceptance, on_path_acceptance
from echo_sim.trees import accepted_nodes, propagate_all


def chain_of(lattices) -> np.ndarray:
    """The on-path chain of each lattice by a plain walk: local index per level, -1 past its end."""
    depth = max(lattices.max_depth, 1)
    chain = np.full((lattices.batch_size, depth), -1, dtype=np.int64)
    for row, (lo, hi) in enumerate(zip(lattices.offsets[:-1], lattices.offsets[1:])):
        for node in range(lo, hi):
            if lattices.on_path[node]:
                assert chain[row, lattices.depth[node] - 1] == -1  # one per level
                chain[row, lattices.depth[node] - 1] = node - lo
    return chain


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 4), st.integers(1, 4), st.floats(0.0, 1.0), st.booleans(),
       st.integers(1, 40), st.data())
def test_chain_acceptance_equals_the_on_path_walk(seed, width, depth, density, closed, bs, data):
    trace = random_trace(np.random.default_rng(seed), num_requests=3, width=width, depth=depth, agreement=0.9)
    reader = LatticeReader(trace)
    rng = np.random.default_rng(seed + 1)
    positions = rng.integers(0, trace.num_positions, bs)
    read = reader.read_beam(positions, data.draw(st.integers(1, depth)), data.draw(st.integers(1, width)))
    lattices = read.lattices
    assert read.on_path_chain is not None  # the generator's lattices hold one on-path chain each
    expected = chain_of(lattices)
    got = read.on_path_chain
    assert np.array_equal(got[:, :expected.shape[1]], expected) and np.all(got[:, expected.shape[1]:] == -1)
    selected = rng.random(lattices.num_nodes) < density
    if closed:
        selected = propagate_all(lattices, selected)
    reference = on_path_acceptance(lattices, selected)
    truth, truth_depth = accepted_nodes(lattices, selected)
    assert np.array_equal(reference[0], truth) and np.array_equal(reference[1], truth_depth)
    for fast in (chain_acceptance(got, lattices.offsets, selected), _chain_few(got, lattices.offsets, selected)):
        for a, b in zip(fast, reference):
            assert np.array_equal(a, b) and a.dtype == b.dtype
    if got.size > FEW_ON_PATH:  # both paths of chain_acceptance are met
        assert all(np.array_equal(a, b) for a, b in zip(chain_acceptance(got[:2], lattices.offsets[:3], selected),
                                                        _chain_few(got[:2], lattices.offsets[:3], selected)))


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16), st.integers(2, 4), st.integers(2, 4), st.data())
def test_narrow_read_chains_equal_the_reference_beam(seed, width, depth, data):
    trace = random_trace(np.random.default_rng(seed), num_requests=3, width=width, depth=depth, agreement=0.9)
    reader = LatticeReader(trace)
    positions = np.asarray(data.draw(st.lists(st.integers(0, trace.num_positions - 1), min_size=1, max_size=8)))
    narrow, read_depth = data.draw(st.integers(1, width - 1)), data.draw(st.integers(1, depth))
    read = reader.read_beam(positions, read_depth, narrow)
    reference, expanded, exactness = beam_batch_reference(reader.read(positions, read_depth), narrow, read_depth)
    assert np.array_equal(read.exactness.on_path_cut_level, exactness.on_path_cut_level)
    expected = chain_of(reference)
    assert np.array_equal(read.on_path_chain[:, :expected.shape[1]], expected)


def test_on_path_chains_refuses_what_is_not_one_chain():
    parent = np.array([[-1, -1, 0, 1]])
    depth = np.array([[1, 1, 2, 2]])
    ok = on_path_chains(np.array([[True, False, True, False]]), depth, parent, 2)
    assert ok.tolist() == [[0, 2]]
    assert on_path_chains(np.array([[True, True, False, False]]), depth, parent, 2) is None  # two on level 1
    assert on_path_chains(np.array([[False, False, True, False]]), depth, parent, 2) is None  # a gap at level 1
    assert on_path_chains(np.array([[True, False, False, True]]), depth, parent, 2) is None  # not its child


def random_record(rng, start: float) -> StepRecord:
    budget = math.nan if rng.random() < 0.3 else float(rng.integers(0, 500))
    return StepRecord(start, start + float(rng.random()), batch_size=int(rng.integers(0, 300)),
                      prefill_tokens=int(rng.integers(0, 4096)), verify_tokens=int(rng.integers(0, 9000)),
                      selected=int(rng.integers(0, 9000)), padding=int(rng.integers(0, 50)), budget=budget,
                      eager=bool(rng.random() < 0.5), draft_depth=int(rng.integers(0, 7)),
                      draft_width=int(rng.integers(0, 5)), accepted=int(rng.integers(0, 2000)),
                      committed=int(rng.integers(0, 2000)), kv_tokens=int(rng.integers(0, 2**40)),
                      draft_time=float(rng.random() * 1e-3), oracle_depth=int(rng.integers(0, 2000)),
                      attention_pairs=int(rng.integers(0, 2**50)), prefill_context=int(rng.integers(0, 10**6)))


def test_step_log_frame_equals_step_frame_of_records():
    rng = np.random.default_rng(0)
    for steps in (0, 1, STEP_BLOCK - 1, STEP_BLOCK, STEP_BLOCK + 3):
        records = [random_record(rng, float(i)) for i in range(steps)]
        log = StepLog()
        for record in records:
            log.append(record)
        assert len(log) == steps
        pd.testing.assert_frame_equal(log.frame(), step_frame(records), check_exact=True)
        pd.testing.assert_frame_equal(step_frame(log.records), step_frame(records), check_exact=True)


@pytest.mark.parametrize("policy, concurrency, workload", [("echo", 1, "trace"), ("echo", 64, "sharegpt"),
                                                       ("ar", 7, "sharegpt"), ("oracle", 16, "trace")])
def test_request_counters_add_up_to_the_step_table(policy, concurrency, workload):
    """The counters a request sums in its batch row and writes at finish equal the per-step totals."""
    result = simulate(SimConfig(policy=policy, concurrency=concurrency, requests=40, workload=workload,
                                step_log=True))
    requests, steps = result.requests, result.steps
    assert (requests["decode_tokens"] == requests["output_len"] - 1).all()
    assert requests["decode_steps"].sum() == steps["batch_size"].sum()
    for request_field, step_field in (("decode_tokens", "committed"), ("accepted_draft", "accepted"),
                                      ("verified_draft", "selected"), ("oracle_depth", "oracle_depth")):
        assert requests[request_field].sum() == steps[step_field].sum(), request_field
    served = np.zeros(len(requests), dtype=np.int64)  # request-steps per request, from the per-step ids
    for ids in steps["requests"]:
        np.add.at(served, np.asarray(ids, dtype=np.int64), 1)
    assert np.array_equal(served, requests["decode_steps"].to_numpy())


PRESETS = {"h200-fitted": ("h200", "llama-3.1-8b", None), "h200-roofline": ("h200", "llama-3.1-8b", "roofline"),
           "h200-moe": ("h200", "qwen3-235b-a22b", None)}
COSTS = {(name, mode): load_cost_model(hardware, model, cost=cost, knobs=ServingKnobs(prefill_mode=mode))
         for name, (hardware, model, cost) in PRESETS.items() for mode in ("separate", "mixed")}


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(PRESETS)), st.integers(1, 8192), st.integers(0, 200_000), st.booleans())
def test_plain_float_prefill_equals_the_vector_forward(name, tokens, context, with_draft):
    terms = COSTS[name, "separate"].terms
    pairs = tokens * context + tokens * (tokens + 1) / 2
    for net, fc in ((terms.target, False), (terms.draft_net, True)):
        vector = net.forward(tokens, context, pairs, 1.0, fc)[0]  # also tabulates the counts
        assert _chunk_forward(net, tokens, context, fc) == vector
    reference = terms.target.forward(tokens, context, pairs, 1.0)[0] + terms.target_eager_s
    if with_draft:
        reference += terms.draft_net.forward(tokens, context, pairs, 1.0, True)[0] + terms.draft_eager_s
    assert terms.prefill(tokens, context, with_draft) == float(reference)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(PRESETS)), st.integers(1, 300), st.integers(0, 4000), st.integers(0, 2_000_000),
       st.booleans(), st.sampled_from(["separate", "mixed"]), st.integers(0, 3000))
def test_one_shape_components_equal_the_vector_terms(name, bs, extra, kv, eager, mode, prefill):
    cost = COSTS[name, mode]
    v = bs + extra
    shape = StepShape(bs, v, kv, v * (kv // bs + v), 0, 0, prefill_tokens=prefill, eager=eager)
    parts = cost.components(shape)
    mixed = mode == "mixed" and prefill > 0
    tokens, eager_mask = cost._run_tokens(np.array([float(v)]), bs, eager or mixed)  # the vector rule
    pairs = shape.attention_pairs * tokens / np.array([float(v)])
    launch = float(cost.terms.launch(eager_mask)[0])
    assert parts["overhead"] == float(cost.terms.scheduler(bs)) + launch
    if not mixed:
        assert parts["verify"] == float(cost.terms.verify_forward(tokens, bs, kv, pairs)[0])
        assert parts["verify"] == float(cost.terms.target.forward(tokens, kv, pairs, tokens)[0])


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(PRESETS)), st.integers(1, 300), st.lists(st.integers(1, 4000), min_size=1, max_size=7),
       st.integers(0, 2_000_000), st.integers(0, 500))
def test_ragged_draft_from_lists_equals_the_vector_draft(name, bs, levels, kv, catch_up):
    cost = COSTS[name, "separate"]
    uniform = [bs] + levels[1:]
    vector = cost.terms._draft_vector(bs, [float(t) for t in uniform], kv)
    assert cost.ragged_draft_time(bs, uniform, kv) == vector
    with_catch_up = cost.ragged_draft_time(bs, [bs + catch_up] + levels[1:], kv)
    first = cost.terms.draft(bs, 1, 1, kv)
    assert with_catch_up == vector + (cost.terms.draft(bs + catch_up, 1, 1, kv) - first if catch_up else 0.0)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(sorted(PRESETS)), st.lists(st.integers(0, 9000), min_size=33, max_size=120),
       st.integers(1, 300), st.integers(0, 2_000_000))
def test_summed_table_verify_equals_the_vector_forward(name, candidates, bs, kv):
    """verify_time's many-candidate path (NetworkCost.verify_forward) equals forward; a count < 1 or
    not yet tabulated falls back to it."""
    cost = COSTS[name, "separate"]
    tokens = np.array(candidates, dtype=float)
    pairs = tokens * (kv + tokens) / bs
    vector = cost.terms.target.forward(tokens, kv, pairs, tokens)  # also tabulates the counts
    table = cost.terms.target.verify_forward(tokens, float(kv), pairs)
    assert (table is None) == (min(candidates) < 1)
    assert cost.terms.verify_forward(tokens, bs, kv, pairs).tolist() == vector.tolist()
    if table is not None:
        assert table.tolist() == vector.tolist()
    v = np.maximum(tokens, bs)
    reference = cost.terms.target.forward(*(lambda t: (t, kv, t * (kv + t) / bs, t))(
        cost._run_tokens(v, bs, False)[0]))
    assert np.array_equal(cost.verify_time(v, bs, kv),
                          reference + cost.terms.launch(cost._run_tokens(v, bs, False)[1]) + cost.terms.scheduler(bs))


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["token-buckets", "per-batch-size"]), st.booleans(), st.integers(1, 300),
       st.lists(st.integers(1, 9000), min_size=2, max_size=40), st.sampled_from([(), (8,), "preset"]))
def test_executed_without_empty_steps_equals_the_one_value_rule(mode, bucketing, batch_size, values, buckets):
    """GraphCapture.executed's path for candidates all > 0 (verify_time's) against executed_one."""
    from echo_sim.cost.graphs import GraphCapture, sglang_batch_sizes

    buckets = tuple(COSTS["h200-fitted", "separate"].graph_buckets) if buckets == "preset" else buckets
    graphs = GraphCapture(mode, buckets, sglang_batch_sizes(1) if buckets else (), 16)
    tokens, eager = graphs.executed(np.array(values), batch_size, bucketing)
    assert tokens.dtype == np.int64 and eager.dtype == bool
    assert [(int(t), bool(e)) for t, e in zip(tokens, eager)] == [graphs.executed_one(v, batch_size, bucketing)
                                                                 for v in values]
