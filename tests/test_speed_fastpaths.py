"""Fast paths of the simulator's step (cost model, policies) equal the references they replace."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from echo_sim.cost.graphs import GraphCapture, sglang_batch_sizes
from echo_sim.cost.model import load_cost_model

BUCKETS = tuple(load_cost_model("h200").graph_buckets)


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(["token-buckets", "per-batch-size"]), st.booleans(), st.integers(1, 300),
       st.lists(st.integers(0, 9000), min_size=1, max_size=6), st.sampled_from([(), (8,), BUCKETS]))
def test_executed_one_equals_the_vector_rule(mode, bucketing, batch_size, values, buckets):
    graphs = GraphCapture(mode, buckets, sglang_batch_sizes(1) if buckets else (), 16)
    tokens, eager = graphs.executed(np.array(values + [0]), batch_size, bucketing)  # >1 V: the vector path
    for v, t, e in zip(values, tokens, eager):
        assert graphs.executed_one(v, batch_size, bucketing) == (int(t), bool(e))
        one_tokens, one_eager = graphs.executed(np.array([v]), batch_size, bucketing)
        assert one_tokens.dtype == tokens.dtype and one_eager.dtype == eager.dtype
        assert (int(one_tokens[0]), bool(one_eager[0])) == (int(t), bool(e))


COSTS = {name: load_cost_model(hardware, model, cost=mode) for name, (hardware, model, mode) in {
    "h200-fitted": ("h200", "llama-3.1-8b", None), "h200-roofline": ("h200", "llama-3.1-8b", "roofline"),
    "a100-qwen3-8b": ("a100", "qwen3-8b", None), "h200-moe": ("h200", "qwen3-235b-a22b", None)}.items()}


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(COSTS)), st.integers(1, 300), st.integers(1, 7), st.integers(1, 4),
       st.integers(0, 2_000_000), st.integers(0, 500), st.booleans(), st.data())
def test_plain_float_draft_equals_the_vector_draft(name, bs, depth, width, kv, catch_up, ragged, data):
    terms = COSTS[name].terms
    extend = bs + catch_up if catch_up else None
    tokens = [float(extend or bs)] + [float(bs * width)] * (depth - 1)
    if ragged:  # ragged_draft_time's levels: a padded token count per level
        tokens[1:] = [float(data.draw(st.integers(1, bs * 16))) for _ in range(depth - 1)]
    vector = terms._draft_vector(bs, tokens, kv)  # also tabulates the counts
    assert terms.draft_levels(bs, tokens, kv) == vector
    if not ragged:
        assert terms.draft(bs, depth, width, kv, extend) == vector
    assert terms._draft_floats(bs, tokens, kv) == vector


@settings(max_examples=80, deadline=None)
@given(st.sampled_from(sorted(COSTS)), st.lists(st.integers(1, 9000), min_size=1, max_size=40),
       st.integers(1, 300), st.integers(0, 2_000_000))
def test_plain_float_verify_equals_the_vector_forward(name, candidates, bs, kv):
    terms = COSTS[name].terms
    tokens = np.array(candidates, dtype=float)
    pairs = tokens * (kv + tokens) / bs
    vector = terms.target.forward(tokens, kv, pairs, tokens)  # also tabulates the counts
    assert terms.verify_forward(tokens, bs, kv, pairs).tolist() == vector.tolist()
    assert terms.target.forward_floats(tokens.tolist(), kv, pairs.tolist()) == vector.tolist()


@settings(max_examples=80, deadline=None)
@given(st.integers(0, 2**16), st.integers(1, 4), st.integers(1, 6), st.integers(1, 256), st.booleans())
def test_depth_rates_equal_the_reference(seed, width, depth, bs, ties):
    from echo_sim.policies.shape import depth_rates, depth_rates_reference

    rng = np.random.default_rng(seed)
    levels = [rng.random(width if level == 1 else width * width) ** level for level in range(1, depth + 1)]
    if ties:  # equal values across levels and zeros (nodes not drafted)
        levels = [np.round(level, 1) for level in levels]
    most = width + (depth - 1) * width * width
    cost = COSTS["h200-fitted"]
    verify = cost.verify_time(bs * (1 + np.arange(most + 1)), bs, 1000 * bs) + rng.random() * 1e-3
    first, per_level = rng.random() * 1e-3, rng.random() * 1e-3
    assert depth_rates(levels, verify, first, per_level, bs) == depth_rates_reference(levels, verify, first, per_level, bs)
