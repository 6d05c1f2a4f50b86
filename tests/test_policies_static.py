"""ar, static, static-chain, dynamic and oracle against brute-force references."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echo_sim.policies import DraftShape, PolicyError, make_policy
from echo_sim.trees import LatticeBatch, accepted_nodes, is_prefix_closed
from test_policies_support import (FakeCost, concat, context, full_lattices, lattice, no_nodes, random_lattices,
                                   run_step)


def brute_force_top(lattices: LatticeBatch, per_request: int, eligible=None) -> np.ndarray:
    """Per request, the `per_request` best nodes by (score desc, depth asc, node asc), via sorted()."""
    chosen = np.zeros(lattices.num_nodes, dtype=bool)
    for r in range(lattices.batch_size):
        nodes = range(lattices.offsets[r], lattices.offsets[r + 1])
        nodes = [i for i in nodes if eligible is None or eligible[i]]
        ranked = sorted(nodes, key=lambda i: (-float(lattices.score[i]), int(lattices.depth[i]), i))
        chosen[ranked[:per_request]] = True
    return chosen


def ragged_batch(seed: int) -> LatticeBatch:
    """Requests with different lattice sizes (depths 2, 4 and 3 and widths 3 and 2)."""
    return concat(full_lattices(seed, 3, width=3, depth=2), full_lattices(seed + 1, 2, width=2, depth=4),
                  full_lattices(seed + 2, 2, width=3, depth=3))


TIED = lattice([
    # request 0: equal scores across depths and siblings; top-3 must take the depth-1 pair first
    [(-1, 0.5, True), (-1, 0.5, False), (0, 0.5, True), (0, 0.25, False), (1, 0.5, False)],
    # request 1: fewer nodes than the quota
    [(-1, 0.9, False), (0, 0.3, False)],
    # request 2: no nodes at all
    [],
])


@pytest.mark.parametrize("lattices", [full_lattices(0, 32), ragged_batch(5), TIED, random_lattices(3, 6)],
                         ids=["uniform", "ragged", "ties", "random-trace"])
@pytest.mark.parametrize("N", [1, 2, 4, 16, 200])
def test_static_picks_the_top_N_minus_1_by_score(lattices, N):
    selection = make_policy(f"static:N={N}").select(lattices, context(lattices))
    assert np.array_equal(selection.nodes, brute_force_top(lattices, N - 1))
    assert is_prefix_closed(lattices, selection.nodes)
    assert selection.chain is None and selection.budget == lattices.batch_size * (N - 1)


def test_static_tie_break_is_depth_then_node():
    selection = make_policy("static:N=4").select(TIED, context(TIED))
    assert list(np.flatnonzero(selection.nodes)) == [0, 1, 2, 5, 6]  # not node 4 (depth 2, index later)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), N=st.integers(1, 40), ragged=st.booleans())
def test_static_matches_brute_force_on_random_lattices(seed, N, ragged):
    lattices = ragged_batch(seed) if ragged else full_lattices(seed, 4, width=3, depth=4)
    selection = make_policy(f"static:N={N}").select(lattices, context(lattices))
    assert np.array_equal(selection.nodes, brute_force_top(lattices, N - 1))


def test_static_pads_to_the_graph_bucket_and_runs_eagerly_above_it():
    lattices = full_lattices(1, 5, width=4, depth=5)
    small = FakeCost(graph_buckets=(16, 64, 128))
    selection = make_policy("static").select(lattices, context(lattices, small))  # V = 5·16 = 80
    assert (selection.padding, selection.eager) == (128 - 80, False)
    selection = make_policy("static").select(lattices, context(lattices, FakeCost(graph_buckets=(16, 64))))
    assert (selection.padding, selection.eager) == (0, True)


def test_static_chain_verifies_S_spine_drafts_per_request():
    lattices = full_lattices(2, 7, width=4, depth=5)
    chain = make_policy("static-chain")
    assert chain.draft == DraftShape(depth=3, width=1)
    selection, outcome = run_step(chain, lattices, context(lattices, draft=DraftShape(3, 1)))
    assert list(selection.chain) == [3] * 7 and not selection.nodes.any()
    assert np.array_equal(outcome.accepted_depth, np.minimum(lattices.spine_run, 3))
    assert selection.padding == 32 - 7 * 4  # V = 28 -> bucket 32
    shorter = chain.select(lattices, context(lattices, draft=DraftShape(2, 1)))
    assert list(shorter.chain) == [2] * 7  # never verifies more than was drafted


def test_chain_policies_run_on_chain_only_traces_tree_policies_refuse():
    empty = no_nodes([0, 2, 5], has_confidences=False)
    ctx = context(empty, draft=DraftShape(3, 1))
    for name in ("ar", "static-chain", "goodput"):
        make_policy(name).select(empty, ctx)
    for name in ("static", "static-adaptive", "dynamic", "echo", "oracle"):
        with pytest.raises(PolicyError, match="chain-only"):
            make_policy(name).select(empty, ctx)


def test_ar_verifies_only_the_roots():
    lattices = full_lattices(3, 5, width=2, depth=2).truncate_depth(0)
    ar = make_policy("ar")
    assert ar.draft.depth == 0
    selection, outcome = run_step(ar, lattices, context(lattices))
    assert not selection.nodes.any() and selection.chain is None and selection.budget == 0
    assert list(outcome.accepted_depth) == [0] * 5
    assert selection.padding == 8 - 5


@pytest.mark.parametrize("tau, n_max", [(0.05, 64), (0.2, 3), (0.0, 5), (1.0, 64), (0.01, 1)])
def test_dynamic_is_every_node_above_tau_capped_by_score(tau, n_max):
    for lattices in (full_lattices(4, 16, width=4, depth=6), ragged_batch(9), TIED):
        selection = make_policy(f"dynamic:tau={tau},n_max={n_max}").select(lattices, context(lattices))
        expected = brute_force_top(lattices, n_max, eligible=lattices.score >= np.float32(tau))
        assert np.array_equal(selection.nodes, expected)
        assert is_prefix_closed(lattices, selection.nodes)
        assert selection.eager and selection.padding == 0


@pytest.mark.parametrize("lattices", [full_lattices(6, 32), ragged_batch(2), random_lattices(7, 8), TIED],
                         ids=["uniform", "ragged", "random-trace", "ties"])
def test_oracle_selects_exactly_the_on_path_nodes(lattices):
    selection, outcome = run_step(make_policy("oracle"), lattices, context(lattices))
    assert np.array_equal(selection.nodes, lattices.on_path)
    assert np.array_equal(outcome.accepted, lattices.on_path)  # no waste: every verified node accepted
    # Per-position ceiling: on these same lattices no other policy accepts deeper.
    for name in ("ar", "static", "static:N=64", "dynamic:tau=0.0", "echo", "echo:gate=off,budget=fixed,N=200"):
        other = make_policy(name).select(lattices, context(lattices))
        _, depth = accepted_nodes(lattices, other.nodes)
        assert np.all(depth <= outcome.accepted_depth), name


@pytest.mark.parametrize("name", ["static", "static-chain", "dynamic", "oracle", "ar"])
def test_same_inputs_give_the_same_selection(name):
    lattices = full_lattices(8, 24)
    first = make_policy(name).select(lattices, context(lattices))
    second = make_policy(name).select(lattices, context(lattices))
    assert np.array_equal(first.nodes, second.nodes)
    assert (first.padding, first.eager, first.budget) == (second.padding, second.eager, second.budget)


@pytest.mark.parametrize("name", ["ar", "static", "static-chain", "static-adaptive", "dynamic", "goodput", "echo",
                                  "oracle", "echo:bucketing=off"])
def test_an_empty_batch_verifies_nothing(name):
    empty = no_nodes([])
    selection, _ = run_step(make_policy(name), empty, context(empty))
    assert selection.padding == 0 and not selection.nodes.any()
    assert selection.draft_tokens_per_request(empty).sum() == 0
