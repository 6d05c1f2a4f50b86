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
