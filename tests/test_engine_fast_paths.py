"""Engine fast paths against the references they must equal (values and dtypes)."""

from __future__ import annotations

import numpy as np
import pytest

from echo_sim.engine import nothing_drafted
from echo_sim.policies.base import Selection
from echo_sim.traces.reader import empty_lattices, on_path_acceptance


@pytest.mark.parametrize("batch_size", [1, 3, 64, 257])
def test_nothing_drafted_equals_the_general_path_on_node_less_lattices(batch_size):
    spine = np.random.default_rng(batch_size).integers(0, 6, size=batch_size).astype(np.int32)
    lattices = empty_lattices(spine)
    selection = Selection(nodes=np.zeros(lattices.num_nodes, dtype=bool))
    reference = (*on_path_acceptance(lattices, selection.nodes), selection.draft_tokens_per_request(lattices))
    fast = nothing_drafted(batch_size)
    assert len(fast) == len(reference)
    for got, want in zip(fast, reference):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
