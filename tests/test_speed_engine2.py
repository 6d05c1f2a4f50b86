"""The engine's fixed per-step fast paths equal what they replace: plain-int sums and verify shapes
of a few requests against the numpy formulas, drafted counts by one reduceat against the bincount,
the remembered graph rule and ar's remembered selection against fresh ones, the shared zeros of
steps without nodes against a fresh on-path walk, StepShape's one-pass check against the per-field
check, and the DecodeBatch table layout the one-add commit relies on."""

from __future__ import annotations

import operator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echo_sim.config import SimConfig
from echo_sim.cost.graphs import GraphCapture, sglang_batch_sizes
from echo_sim.cost.model import CostModelError, StepShape, load_cost_model
from echo_sim.cost.serving import ServingKnobs
from echo_sim.engine import COUNTER_ROWS, STEP_ROWS, DecodeBatch, build_simulation
from echo_sim.metrics import COUNTERS
from echo_sim.policies.ar import ArPolicy
from echo_sim.policies.base import DraftShape, Selection, StepContext
from echo_sim.policies.common import fitted_selection
from echo_sim.step import FEW_ROWS, int_sum, int_sums, verify_shape
from echo_sim.testing import random_trace
from echo_sim.traces.reader import LatticeReader, empty_lattices, on_path_acceptance
from echo_sim.trees import LatticeBatch


def verify_shape_reference(kv_lens, drafted, padding):
    """verify_shape as numpy arrays at every size (the former implementation)."""
    verified = 1 + np.asarray(drafted, dtype=np.int64)
    kv_lens = np.asarray(kv_lens, dtype=np.int64)
    return int(verified.sum() + padding), int(np.dot(verified, kv_lens + verified))


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2 * FEW_ROWS + 3), st.integers(0, 2**31), st.integers(0, 2000), st.data())
def test_plain_int_sums_and_verify_shape_equal_the_numpy_formulas(bs, top, padding, data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16)))
    kv = rng.integers(0, top + 1, bs, dtype=np.int64)
    drafted = rng.integers(0, 300, bs, dtype=np.int64)
    assert int_sum(kv) == int(kv.sum()) and type(int_sum(kv)) is int
    table = rng.integers(0, top + 1, (6, bs), dtype=np.int64)
    assert int_sums(table) == table.sum(axis=1).tolist() and all(type(v) is int for v in int_sums(table))
    for kind in (np.int64, np.intp, np.int32):
        got = verify_shape(kv, drafted.astype(kind), padding)
        assert got == verify_shape_reference(kv, drafted, padding) and all(type(v) is int for v in got)
    assert verify_shape(kv.tolist(), drafted.tolist(), np.int64(padding)) == verify_shape_reference(kv, drafted, padding)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**16), st.lists(st.integers(0, 6), min_size=1, max_size=40), st.floats(0, 1))
def test_drafted_counts_equal_the_bincount(seed, sizes, density):
    """draft_tokens_per_request: one reduceat when no lattice is empty, the bincount otherwise."""
    rng = np.random.default_rng(seed)
    offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
    n = int(offsets[-1])
    lattices = LatticeBatch(offsets=offsets, token=np.zeros(n, np.int32), parent=np.full(n, -1, np.int32),
                            depth=np.ones(n, np.int32), cond_prob=np.ones(n, np.float32),
                            score=np.ones(n, np.float32), on_path=np.zeros(n, bool),
                            spine_run=np.zeros(len(sizes), np.int32))
    nodes = rng.random(n) < density
    got = Selection(nodes=nodes).draft_tokens_per_request(lattices)
    expected = np.bincount(np.repeat(np.arange(len(sizes)), sizes)[nodes], minlength=len(sizes))
    assert got.tolist() == expected.tolist() and got.dtype == np.intp


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["token-buckets", "per-batch-size"]), st.sampled_from([(), (8,), (1, 2, 4, 64, 512)]),
       st.lists(st.tuples(st.integers(0, 9000), st.integers(1, 300), st.booleans()), min_size=1, max_size=60))
def test_remembered_graph_rule_equals_a_fresh_one(mode, buckets, queries):
    graphs = GraphCapture(mode, buckets, sglang_batch_sizes(1) if buckets else (), 16)
    for v, bs, bucketing in queries + queries:  # the second pass answers from memory
        expected = GraphCapture(mode, buckets, sglang_batch_sizes(1) if buckets else (), 16)._executed_one(
            v, bs, bucketing)
        assert graphs.executed_one(v, bs, bucketing) == expected
        tokens, eager = graphs.executed(np.array([v, v]), bs, bucketing)  # the array rule agrees
        assert (int(tokens[0]), bool(eager[0])) == expected
    assert graphs == GraphCapture(mode, buckets, sglang_batch_sizes(1) if buckets else (), 16)  # memory aside


def test_graph_memory_is_bounded(monkeypatch):
    import echo_sim.cost.graphs as graphs_module

    monkeypatch.setattr(graphs_module, "ONE_RUNS_KEPT", 4)
    graphs = GraphCapture("token-buckets", (1, 2, 4, 8, 16))
    answers = [graphs.executed_one(v, 1) for v in range(1, 20)]
    assert len(graphs._one_runs) <= 4
    assert answers == [graphs._executed_one(v, 1, True) for v in range(1, 20)]


def test_ar_remembered_selection_equals_a_fresh_one():
    """ArPolicy.select answers from memory per (batch size, node count), for the cost model it was
    asked with: the same padding and eager flag as fitted_selection, a read-only empty mask."""
    costs = [load_cost_model("h200"), load_cost_model("h200", knobs=ServingKnobs(verify_graphs="per-batch-size")),
             load_cost_model("h200", "qwen3-235b-a22b")]
    policy = ArPolicy()
    for cost in costs + costs[::-1]:
        for bs in (1, 2, 3, 7, 255, 256, 257, 1000, 9000, 3, 1):
            lattices = empty_lattices(np.zeros(bs, dtype=np.int32))
            context = StepContext(bs, np.full(bs, 100, dtype=np.int64), cost, DraftShape(0, 1), 6, 4)
            got = policy.select(lattices, context)
            fresh = fitted_selection(cost, np.zeros(0, dtype=bool), bs, 0, budget=0)
            assert (got.padding, got.eager, got.budget, got.chain, got.nodes.tolist()) == \
                   (fresh.padding, fresh.eager, fresh.budget, fresh.chain, fresh.nodes.tolist())
            assert not got.nodes.flags.writeable
    assert "_selections" not in policy.label and policy == ArPolicy()


@pytest.mark.parametrize("bs", [0, 1, 2, 64])
def test_steps_without_nodes_share_read_only_zeros_equal_to_a_fresh_walk(bs):
    spine = np.arange(bs, dtype=np.int32)
    lattices = empty_lattices(spine)
    accepted, accepted_depth, on_path_depth = on_path_acceptance(lattices, np.zeros(0, dtype=bool))
    assert (accepted.dtype, accepted_depth.dtype, on_path_depth.dtype) == (np.dtype(bool), np.int32, np.int64)
    assert accepted.shape == (0,) and accepted_depth.tolist() == [0] * bs and on_path_depth.tolist() == [0] * bs
    assert lattices.offsets.tolist() == [0] * (bs + 1) and lattices.spine_run is spine
    for array in (lattices.offsets, accepted_depth, on_path_depth):
        assert not array.flags.writeable
    # a reader's depth-0 view of a real trace walks to the same zeros
    trace = random_trace(np.random.default_rng(bs), num_requests=2)
    read = LatticeReader(trace).read(np.zeros(bs, dtype=np.int64), 0)
    assert read.num_nodes == 0
    fresh = on_path_acceptance(read, np.zeros(0, dtype=bool))
    assert [a.tolist() for a in fresh] == [accepted.tolist(), accepted_depth.tolist(), on_path_depth.tolist()]


def per_field_check(values: dict) -> bool:
    """The per-field rule StepShape._check_counts applies: True when every count is an integer >= 0."""
    for value in values.values():
        try:
            if operator.index(value) < 0:
                return False
        except TypeError:
            return False
    return True


VALUES = st.one_of(st.integers(-3, 10**12), st.booleans(), st.floats(allow_nan=True), st.none(), st.text(max_size=2),
                   st.integers(0, 10**6).map(np.int64), st.integers(-5, 5).map(np.int32))


@settings(max_examples=200, deadline=None)
@given(st.fixed_dictionaries({name: VALUES for name in ("batch_size", "verify_tokens", "kv_tokens",
                                                         "attention_pairs", "draft_depth", "draft_width",
                                                         "prefill_tokens", "prefill_context",
                                                         "draft_extend_tokens")}))
def test_step_shape_one_pass_check_accepts_what_the_per_field_check_accepts(values):
    valid = per_field_check(values)
    try:
        StepShape(**values)
    except CostModelError as error:  # the count check names a bad field; the later rules name others
        assert ("must be >= 0" in str(error) or "must be an integer" in str(error)) == (not valid)
        return
    assert valid


def test_decode_batch_rows_are_views_and_one_add_commits_a_step():
    assert DecodeBatch.FIELDS[STEP_ROWS] == ("position", *COUNTERS)
    assert DecodeBatch.FIELDS[COUNTER_ROWS] == COUNTERS
    batch = DecodeBatch.joining(np.array([4, 9]), np.array([10, 20]), np.array([3, 5]), np.array([100, 200]),
                                np.array([7, 8]))
    assert batch.position.tolist() == [1, 1] and batch.output_len.tolist() == [10, 20]
    assert batch.prompt_len.tolist() == [3, 5] and batch.trace_start.tolist() == [100, 200]
    assert batch.trace_len.tolist() == [7, 8] and batch.request.tolist() == [4, 9] and batch.size == 2
    batch.position += np.array([2, 3])
    batch.draft_lag[:] = [5, 6]
    assert batch.table[DecodeBatch.FIELDS.index("position")].tolist() == [3, 4]
    assert batch.table[DecodeBatch.FIELDS.index("draft_lag")].tolist() == [5, 6]
    kept = batch.keep(np.array([False, True]))
    assert kept.size == 1 and kept.position.tolist() == [4] and kept.request.tolist() == [9]
    joined = kept.extend(batch)
    assert joined.request.tolist() == [9, 4, 9] and joined.position.base is not None


def test_engine_steps_of_ar_are_priced_as_before():
    """End to end: ar's remembered selection and the shared zeros leave every step as the rules say
    (V = bs padded to its graph, one token per request, nothing drafted)."""
    simulation = build_simulation(SimConfig(policy="ar", concurrency=3, requests=12, step_log=True))
    steps = simulation.run().result().steps
    decode = steps[steps["batch_size"] > 0]
    for row in decode.itertuples():
        graph, eager = simulation.cost.executed_one(row.batch_size, row.batch_size)
        assert (row.verify_tokens, row.padding, row.eager) == (graph, graph - row.batch_size, eager)
        assert row.committed == row.batch_size and row.accepted == row.selected == row.oracle_depth == 0


@pytest.mark.parametrize("policy, concurrency", [("ar", 1), ("ar", 24), ("goodput", 4), ("echo", 2), ("static-chain", 3)])
def test_bonus_only_steps_equal_the_general_step(monkeypatch, policy, concurrency):
    """Steps that verify no draft token (ar; goodput's length 0; echo's no-draft shape) take the
    bonus-only path (engine.bonus_only): its step and request tables equal the general path's."""
    import echo_sim.engine as engine

    def run():
        simulation = build_simulation(SimConfig(policy=policy, concurrency=concurrency, requests=40, step_log=True))
        simulation.run()
        return simulation.steps.frame(), simulation.requests.frame()

    fast_steps, fast_requests = run()
    taken = []
    monkeypatch.setattr(engine, "bonus_only", lambda lattices, selection: taken.append(1) and False)
    slow_steps, slow_requests = run()
    assert taken  # the general path ran every step
    assert fast_steps.equals(slow_steps) and fast_requests.equals(slow_requests)
