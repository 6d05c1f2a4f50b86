"""echo (gate modes, calibration, budget, super-tree top-B, bucketing, elastic shape) against references."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from echo_sim.policies import DraftShape, make_policy
from echo_sim.policies.calibration import (
    BIN_CENTRES,
    BIN_EDGES,
    CalibrationCurve,
    isotonic_non_decreasing,
    score_bins,
)
from echo_sim.policies.budget import goodput_budget
from echo_sim.trees import LatticeBatch, is_prefix_closed
from test_policies_support import FakeCost, context, full_lattices, lattice, random_lattices, run_step


def ancestors_and_self(lattices: LatticeBatch, node: int) -> list[int]:
    base = lattices.offsets[np.searchsorted(lattices.offsets, node, side="right") - 1]
    path = [node]
    while lattices.parent[path[-1]] >= 0:
        path.append(int(base + lattices.parent[path[-1]]))
    return path


def gated_in(lattices: LatticeBatch, gate_value: np.ndarray, tau: float) -> np.ndarray:
    """Brute force: the node and all its ancestors pass the gate."""
    return np.array([all(gate_value[a] >= tau for a in ancestors_and_self(lattices, i))
                     for i in range(lattices.num_nodes)], dtype=bool)


def brute_force_supertree(lattices: LatticeBatch, confidence, eligible, budget: int) -> np.ndarray:
    rows = lattices.request_of_node()
    order = sorted(np.flatnonzero(eligible), key=lambda i: (-confidence[i], -float(lattices.score[i]),
                                                            int(lattices.depth[i]), int(rows[i]), i))
    chosen = np.zeros(lattices.num_nodes, dtype=bool)
    chosen[order[:budget]] = True
    return chosen


SPECS = st.sampled_from([
    "echo:probe=0", "echo:budget=fixed,probe=0", "echo:gate=select,probe=0", "echo:calibration=off,probe=0",
    "echo:bucketing=off,probe=0", "echo:gate=off,budget=fixed,N=4", "echo:tau=0.05,bucketing=off,probe=0",
    "echo:tau=0.5,gate=select,calibration=off,shape=off", "echo:tau=0.02,calibration=off,probe=0",
])


def has_child(lattices: LatticeBatch) -> np.ndarray:
    out = np.zeros(lattices.num_nodes, dtype=bool)
    parent = lattices.global_parent()
    out[parent[parent >= 0]] = True
    return out


@settings(max_examples=30, deadline=None)
@given(spec=SPECS, seed=st.integers(0, 10_000), bs=st.integers(1, 24), steps=st.integers(1, 4),
       frontier_only=st.booleans())
def test_echo_selection_is_prefix_closed_gated_and_budgeted(spec, seed, bs, steps, frontier_only):
    policy = make_policy(spec)
    cost = FakeCost(graph_buckets=(1, 2, 4, 8, 16, 32, 64, 128))
    build = random_lattices if frontier_only else full_lattices  # testing.random_trace keeps k per level
    for step in range(steps):  # later steps run on a calibration curve that has seen outcomes
        lattices = build(seed + step, bs, width=3, depth=4)
        curve = policy.curve(lattices.score) if policy.calibration else lattices.score.astype(float)
        expand_threshold = 0.0 if policy.probing else min(policy.tau, policy.cut)  # before this step
        selection, _ = run_step(policy, lattices, context(lattices, cost))
    nodes = selection.nodes
    assert is_prefix_closed(lattices, nodes)
    if policy.gate == "select":  # nothing below τ, nor under a node below τ
        eligible = gated_in(lattices, curve, policy.tau)
    elif policy.gate == "expand":  # nothing under a frontier node below min(τ, ĉ_cut): not expanded
        parent = lattices.global_parent()
        expanded = has_child(lattices) & (curve >= expand_threshold)
        eligible = (parent < 0) | expanded[np.maximum(parent, 0)]
        eligible = np.array([all(eligible[a] for a in ancestors_and_self(lattices, i))
                             for i in range(lattices.num_nodes)], dtype=bool)
    else:
        eligible = np.ones(lattices.num_nodes, bool)
    assert not np.any(nodes & ~eligible)
    count, verify = int(nodes.sum()), bs + int(nodes.sum()) + selection.padding
    if policy.bucketing and not selection.eager:
        assert verify == cost.graph_bucket(bs + min(selection.budget, int(eligible.sum())))
        assert selection.padding == 0 or count == int(eligible.sum())  # pad only when the gate ran dry
    else:
        assert selection.padding == 0 and count == min(selection.budget, int(eligible.sum()))
        assert selection.eager == (verify not in cost.graph_buckets)
    if policy.budget == "fixed":
        assert selection.budget == bs * (policy.N - 1)


def test_fixed_budget_is_bs_times_N_minus_1_when_enough_nodes_pass():
    lattices = full_lattices(1, 10, width=4, depth=6)
    selection = make_policy("echo:budget=fixed,gate=off,bucketing=off").select(lattices, context(lattices))
    assert selection.budget == 10 * 15 and selection.nodes.sum() == 150
    assert gated_in(lattices, lattices.score, 0.05).sum() >= 30  # enough gated-in nodes for B = 30
    selection = make_policy("echo:budget=fixed,N=4,bucketing=off,tau=0.05").select(lattices, context(lattices))
    assert selection.budget == 30 and selection.nodes.sum() == 30


def test_super_tree_is_the_global_top_B_of_gated_nodes():
    lattices = full_lattices(2, 12, width=4, depth=5)
    policy = make_policy("echo:gate=select,calibration=off,budget=fixed,N=5,bucketing=off,probe=0")
    selection = policy.select(lattices, context(lattices))
    eligible = gated_in(lattices, lattices.score, 0.2)
    expected = brute_force_supertree(lattices, lattices.score.astype(float), eligible, 12 * 4)
    assert np.array_equal(selection.nodes, expected)
    per_request = np.bincount(lattices.request_of_node()[selection.nodes], minlength=12)
    assert per_request.min() != per_request.max()  # the depth/width pivot: trees differ by request


def test_calibrated_ranking_matches_a_brute_force_running_min():
    policy = make_policy("echo:budget=fixed,N=6,bucketing=off,gate=off")
    for seed in range(6):  # let the curve learn
        lattices = full_lattices(seed, 16, width=4, depth=5, alpha=1.0)
        run_step(policy, lattices, context(lattices))
    raw = policy.curve(lattices.score)
    confidence = np.array([min(raw[a] for a in ancestors_and_self(lattices, i))
                           for i in range(lattices.num_nodes)])
    selection = policy.select(lattices, context(lattices))
    expected = brute_force_supertree(lattices, confidence, np.ones(lattices.num_nodes, bool), 16 * 5)
    assert np.array_equal(selection.nodes, expected)


def test_expand_gate_drafts_no_children_of_a_frontier_node_below_tau():
    # node 0 (0.5) is expanded; node 1 (0.05 < τ) is a frontier node that is not: its child 2 is not
    # drafted; node 3 (child of 0) is. Levels: the roots, then the 1 node expanded at level 1.
    lattices = lattice([[(-1, 0.5, True), (-1, 0.05, False), (1, 0.05, False), (0, 0.45, True)]])
    policy = make_policy("echo:tau=0.2,calibration=off,budget=fixed,bucketing=off,probe=0")
    policy.cut = 1.0  # the previous step's budget verified nothing below 1: τ is the threshold
    selection = policy.select(lattices, context(lattices))
    assert list(np.flatnonzero(selection.nodes)) == [0, 1, 3]
    assert selection.draft_level_tokens == (1, 1)
    probe = make_policy("echo:tau=0.2,calibration=off,budget=fixed,bucketing=off")  # step 0 probes, ungated
    probe.cut = 1.0
    assert list(np.flatnonzero(probe.select(lattices, context(lattices)).nodes)) == [0, 1, 2, 3]


def test_expand_threshold_is_the_budget_cut_capped_by_tau():
    # scores: roots 0.6, 0.3, 0.1; children 0.5 (of 0), 0.25 (of 1), 0.08 (of 2)
    lattices = lattice([[(-1, 0.6, True), (-1, 0.3, False), (-1, 0.1, False),
                         (0, 0.5, True), (1, 0.25, False), (2, 0.08, False)]])
    spec = "echo:tau=0.2,calibration=off,budget=fixed,bucketing=off,probe=0,shape=off"
    everything = make_policy(spec + ",N=7")  # the budget verifies every node: nothing to prune next
    everything.select(lattices, context(lattices))
    assert everything.cut == 0.0
    assert everything.select(lattices, context(lattices)).nodes.all()  # node 2 (0.1 < τ) expanded too
    tight = make_policy(spec + ",N=3")  # B = 2 verifies 0.6, 0.5: ĉ_cut = 0.5, the threshold min(τ, 0.5)
    assert list(np.flatnonzero(tight.select(lattices, context(lattices)).nodes)) == [0, 3]
    assert tight.cut == 0.5
    again = make_policy(spec + ",N=7")
    again.cut = 0.5  # τ = 0.2 caps it: node 1 (0.3 >= τ) is expanded, node 2 (0.1) is not
    assert list(np.flatnonzero(again.select(lattices, context(lattices)).nodes)) == [0, 1, 2, 3, 4]
    loose = make_policy(spec.replace("tau=0.2", "tau=1.0") + ",N=7")
    loose.cut = 0.09  # below τ the cut rules: node 2 (0.1 >= 0.09) is expanded
    assert loose.select(lattices, context(lattices)).nodes.all()


def brute_force_budget(confidence, bs, cost, draft_seconds, bucketing, tie=0.0):
    """Every B's (executed budget, rate); the first B within `tie` of the best rate."""
    values = np.sort(confidence)[::-1]
    rated = []
    for budget in range(len(values) + 1):
        bucket = cost.graph_bucket(bs + budget)
        graph = bucketing and bucket is not None
        tokens = bucket if graph else bs + budget
        filled = min(tokens - bs, len(values))
        eager = not graph and (bucketing or tokens not in cost.graph_buckets)
        seconds = float(cost.verify_time([tokens], bs, 0, eager=eager)[0]) + draft_seconds
        rated.append((tokens - bs if graph else budget, (bs + values[:filled].sum()) / seconds))
    top = max(rate for _, rate in rated)
    return next(budget for budget, rate in rated if rate >= top * (1 - tie))


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 1000), bs=st.integers(1, 40), n=st.integers(0, 300),
       knee=st.sampled_from([0, 64, 10**6]),
       bucketing=st.booleans(), buckets=st.sampled_from([(1, 2, 4, 8), (4, 16, 64, 256, 1024), (8, 32)]),
       tie=st.sampled_from([0.0, 0.005, 0.05]))
def test_goodput_budget_is_the_exhaustive_argmax(seed, bs, n, knee, bucketing, buckets, tie):
    confidence = np.random.default_rng(seed).random(n) ** 2
    cost = FakeCost(knee=knee, per_token=1e-4, graph_buckets=buckets)
    got = goodput_budget(confidence, bs, 0, 3e-3, cost, bucketing, tie=tie)
    assert got == brute_force_budget(confidence, bs, cost, 3e-3, bucketing, tie)


def test_budget_within_the_tie_takes_the_cheaper_step():
    # memory-bound verify (flat time): each node adds its ĉ, so B = 2 beats B = 1 by 0.01 / 2.5
    confidence = np.array([0.5, 0.01])
    cost = FakeCost(knee=10**6, graph_buckets=())  # every shape eager, all at one price
    assert goodput_budget(confidence, 2, 0, 0.0, cost, False) == 2
    assert goodput_budget(confidence, 2, 0, 0.0, cost, False, tie=0.005) == 1  # +0.4 % is a tie
    assert goodput_budget(confidence, 2, 0, 0.0, cost, False, tie=0.001) == 2


def test_budget_grows_when_verify_is_flat_and_shrinks_when_tokens_cost_compute():
    lattices = full_lattices(3, 64, width=4, depth=6, alpha=1.0)  # a humble draft: dear tokens are not worth it

    def budget(cost, bucketing="off"):
        policy = make_policy(f"echo:gate=off,bucketing={bucketing},tie=0")  # the argmax itself
        return policy.select(lattices, context(lattices, cost)).budget

    assert budget(FakeCost(knee=10**6)) == lattices.num_nodes  # memory-bound: every node is free
    per_token = [1e-6, 1e-5, 1e-4, 1e-3]  # compute-bound from the first token, ever dearer
    for bucketing in ("on", "off"):
        budgets = [budget(FakeCost(knee=0, per_token=p, eager_extra=0.0), bucketing) for p in per_token]
        assert all(a > b for a, b in zip(budgets, budgets[1:-1])) and budgets[-1] <= budgets[-2]
        assert budgets[0] > 10 * 64 and budgets[-1] == 0  # deep trees when cheap, plain decoding when dear


def test_bucketing_pads_fills_and_goes_eager_above_the_largest_bucket():
    lattices = full_lattices(4, 6, width=4, depth=6)
    spec = "echo:budget=fixed,N=3,calibration=off,gate=off"
    few = make_policy(spec).select(lattices, context(lattices, FakeCost(graph_buckets=(8, 32, 64))))
    assert (few.nodes.sum(), few.padding, few.eager) == (32 - 6, 0, False)  # V = 18 -> filled to 32
    above = make_policy(spec).select(lattices, context(lattices, FakeCost(graph_buckets=(8, 16))))
    assert (above.nodes.sum(), above.padding, above.eager) == (12, 0, True)
    ragged_cost = FakeCost(graph_buckets=(8, 32))
    ragged = make_policy(spec + ",bucketing=off").select(lattices, context(lattices, ragged_cost))
    assert (ragged.nodes.sum(), ragged.padding, ragged.eager) == (12, 0, True)
    gated = lattice([[(-1, 0.9, True), (0, 0.5, True), (-1, 0.1, False)]] * 3)  # 2 gated-in nodes each
    one_bucket = FakeCost(graph_buckets=(16,))
    padded = make_policy("echo:budget=fixed,calibration=off,gate=select,probe=0").select(gated, context(gated, one_bucket))
    assert (padded.nodes.sum(), padded.padding, padded.eager) == (6, 16 - 3 - 6, False)


def test_shape_chooser_goes_wide_when_verify_is_free_and_narrow_when_it_is_not():
    from echo_sim.policies.shape import NO_DRAFT, ShapeChooser

    chooser = ShapeChooser(width=3, depth=3, hysteresis=0.0)
    # level profiles: level 1 very confident at rank 0; deeper ranks worth little
    for width in (1, 2, 3):
        for level in (1, 2, 3):
            slots = chooser.slots(width, level)
            chooser.profiles[(width, level)] = np.array([0.9 ** level] + [0.05] * (slots - 1))
    free = FakeCost(per_token=0.0, draft_per_level=0.0)
    wide = chooser.choose(chooser.rates(8, 8 * 100, 0.0, free, bucketing=False))
    assert wide == DraftShape(3, 3)  # free verification and drafting: the largest shape
    costly = FakeCost(per_token=1e-2, knee=0, draft_per_level=1e-4)
    chooser.current = None  # no hysteresis from the previous choice
    narrow = chooser.choose(chooser.rates(8, 8 * 100, 0.0, costly, bucketing=False))
    assert narrow.width == 1 and narrow != NO_DRAFT  # only the confident top-1 chain pays
    expensive_draft = FakeCost(per_token=1e-2, knee=0, draft_per_level=10.0)
    chooser.current = None
    assert chooser.choose(chooser.rates(8, 800, 0.0, expensive_draft, bucketing=False)) == NO_DRAFT


def test_shape_hysteresis_keeps_the_current_shape_within_the_margin():
    from echo_sim.policies.shape import ShapeChooser

    chooser = ShapeChooser(width=2, depth=2, hysteresis=0.05)
    chooser.current = DraftShape(2, 2)
    assert chooser.choose({DraftShape(2, 2): 1.0, DraftShape(1, 1): 1.04}) == DraftShape(2, 2)
    assert chooser.choose({DraftShape(2, 2): 1.0, DraftShape(1, 1): 1.06}) == DraftShape(1, 1)


def test_shape_off_drafts_the_full_shape_capped_by_S_max():
    fixed = make_policy("echo:shape=off,S_max=4")
    lattices = full_lattices(0, 3, width=3, depth=6)
    fixed.select(lattices, context(lattices))
    assert fixed.draft == DraftShape(4, 3)


def test_same_history_gives_the_same_selections():
    runs = []
    for _ in range(2):
        policy, record = make_policy("echo"), []
        for seed in range(5):
            lattices = full_lattices(seed, 20, width=4, depth=6)
            selection, _ = run_step(policy, lattices, context(lattices))
            record.append((selection.nodes.tobytes(), selection.padding, selection.budget, policy.draft))
        runs.append(record)
    assert runs[0] == runs[1]


def test_isotonic_fit_against_hand_computed_cases():
    assert np.allclose(isotonic_non_decreasing([1, 3, 2], [1, 1, 1]), [1, 2.5, 2.5])
    assert np.allclose(isotonic_non_decreasing([3, 2, 1], [1, 1, 1]), [2, 2, 2])
    assert np.allclose(isotonic_non_decreasing([2, 1], [1, 3]), [1.25, 1.25])
    assert np.allclose(isotonic_non_decreasing([0.1, 0.5, 0.4, 0.9], [1, 1, 3, 1]), [0.1, 0.425, 0.425, 0.9])


def test_calibration_curve_learns_from_outcomes_and_stays_monotone():
    curve = CalibrationCurve(prior_weight=10.0)
    assert np.allclose(curve(BIN_CENTRES), BIN_CENTRES)  # no data: the raw score
    curve.observe(np.full(1000, 0.9), np.zeros(1000, bool))  # confident drafts that always miss
    assert curve(np.array([0.9]))[0] < 0.1
    assert np.all(np.diff(curve.values) >= 0)
    curve.observe(np.full(1000, 0.3), np.ones(1000, bool))  # humble drafts that always hit
    assert np.all(np.diff(curve.values) >= 0) and curve(np.array([0.3]))[0] > 0.3


@pytest.mark.parametrize("edges", [BIN_EDGES, np.array([0.0, 0.25, 0.5, 1.0])])
def test_score_bins_puts_each_score_in_its_left_closed_bin(edges):
    rng = np.random.default_rng(0)
    score = np.concatenate((rng.random(500) ** 3, edges))  # every edge itself, 1.0 included
    bins = score_bins(score, edges)
    for value, b in zip(score, bins):
        last = len(edges) - 2
        assert edges[b] <= value and (value < edges[b + 1] or (b == last and value == edges[-1]))


def test_echo_learns_only_with_calibration_on():
    lattices = full_lattices(5, 8)
    learning, frozen = make_policy("echo"), make_policy("echo:calibration=off")
    for policy in (learning, frozen):
        run_step(policy, lattices, context(lattices))
    assert learning.curve.nodes.sum() > 0 and frozen.curve.nodes.sum() == 0
