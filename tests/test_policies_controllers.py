"""The load-aware controllers on synthetic acceptance histories: static-adaptive and goodput."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from echo_sim.policies import DraftShape, Outcome, Selection, make_policy
from echo_sim.policies.static_adaptive import AdaptiveSteps, bucket_key
from test_policies_support import FakeCost, context, full_lattices, lattice, run_step


def steps_after(controller: AdaptiveSteps, history: list[float]) -> list[int]:
    return [controller.update(value) for value in history]


def test_adaptive_steps_climb_when_drafts_are_accepted():
    # ema starts at S0 − 1 = 4 and moves toward 6: ema_n = 6 − 2·0.8^n; first decision at update 15
    # (warmup 10 + interval 5), ema = 5.93 > 5 − 0.5, so S goes 5 -> 7 and no further (last candidate).
    steps = steps_after(AdaptiveSteps((1, 3, 5, 7), initial=5, down_hysteresis=-0.25), [6.0] * 25)
    assert steps == [5] * 14 + [7] * 11


def test_adaptive_steps_fall_when_drafts_are_rejected():
    # ema_n = 4·0.8^n: at update 15 it is 0.14 <= 3 − 0.5 − 0.25 and <= 1 − 0.5 − 0.25: 5 -> 1 at once.
    controller = AdaptiveSteps((1, 3, 5, 7), initial=5, down_hysteresis=-0.25)
    assert steps_after(controller, [0.0] * 25) == [5] * 14 + [1] * 11
    assert controller.ema == pytest.approx(4 * 0.8**25)


def test_adaptive_steps_hysteresis_holds_a_borderline_depth():
    # From S = 3 the drop threshold is that of the previous candidate 1: 1 − 0.5 + h. ema -> 0.4
    # (0.456 at the first decision): h = −0.25 holds S = 3, h = 0 drops it to 1.
    held = AdaptiveSteps((1, 3, 5, 7), initial=3, down_hysteresis=-0.25)
    assert steps_after(held, [0.4] * 40) == [3] * 40
    dropped = AdaptiveSteps((1, 3, 5, 7), initial=3, down_hysteresis=0.0)
    assert steps_after(dropped, [0.4] * 40) == [3] * 14 + [1] * 26


def test_adaptive_steps_probe_back_up_from_no_speculation():
    # Bucket 8: candidates (0, 1, 3); S0 = 5 is not one, so the middle candidate 1; ema starts at 0.
    controller = AdaptiveSteps((0, 1, 3), initial=5)
    history = steps_after(controller, [0.0] * 30)
    # 15: ema 0 <= 0.5 -> S = 0; 20: probe S = 1; 25: still nothing accepted -> S = 0; 30: probe again.
    assert history == [1] * 14 + [0] * 5 + [1] * 5 + [0] * 5 + [1]


def test_batch_size_buckets():
    assert [bucket_key(bs) for bs in (0, 1, 7, 8, 31, 32, 63, 64, 256)] == [1, 1, 1, 8, 8, 32, 32, 64, 64]


def confident_chain(depth: int, siblings: int) -> list[tuple[int, float, bool]]:
    """One lattice: an on-path chain with score 0.9^d and weak off-path siblings at every level."""
    nodes, chain_parent = [], -1
    for d in range(1, depth + 1):
        parent_score = 0.9 ** (d - 1)
        nodes.append((chain_parent, 0.9**d, True))
        nodes += [(chain_parent, parent_score * 0.02 * (j + 1), False) for j in range(siblings)]
        chain_parent = len(nodes) - 1 - siblings
    return nodes


def test_static_adaptive_policy_follows_its_bucket():
    policy = make_policy("static-adaptive")
    assert policy.draft == DraftShape(depth=5, width=4)
    big = full_lattices(0, 64, width=4, depth=6)
    selection, _ = run_step(policy, big, context(big))
    assert not selection.nodes.any() and policy.draft.depth == 0  # bucket 64: no speculation
    # bs = 2 (bucket 1), each lattice a confident on-path chain of 6 plus 3 weak siblings per level:
    # 5 drafts accepted per step, ema = 5 − 0.8^n > 5 − 0.5 at step 15, so S goes 5 -> 7. 7 is deeper
    # than the trace: 6 levels are drafted and N(6) − 1 = 18 of the 24 nodes verified.
    deep = lattice([confident_chain(6, siblings=3)] * 2)
    depths = []
    for _ in range(16):
        ctx = context(deep, draft=DraftShape(min(policy.draft.depth, 6), 4))
        selection, outcome = run_step(policy, deep.truncate_depth(ctx.draft.depth), ctx)
        depths.append(policy.draft.depth)
    assert depths == [5] * 14 + [7] * 2
    assert list(outcome.accepted_depth) == [6, 6]
    assert list(selection.draft_tokens_per_request(deep)) == [18, 18]
    assert policy.draft_tokens(1) == 4 and policy.draft_tokens(3) == 10 and policy.draft_tokens(0) == 1


def chain_outcome(chain: list[int], accepted: list[int]) -> Outcome:
    lattices = full_lattices(0, len(chain), width=2, depth=2)
    selection = Selection(nodes=np.zeros(lattices.num_nodes, dtype=bool), chain=np.array(chain, dtype=np.int32))
    return Outcome(lattices, selection, np.zeros(lattices.num_nodes, dtype=bool), np.array(accepted, np.int32))


def test_goodput_acceptance_rate_is_a_censored_geometric_estimate():
    policy = make_policy("goodput:beta=1.0")
    assert policy.alpha == pytest.approx(0.6)  # prior alpha0
    # 7 drafts accepted, 3 rejections (2 < 4, 0 < 4, 1 < 4; the full chain of 4 is censored)
    policy.observe(chain_outcome([4, 4, 4, 4], [4, 2, 0, 1]))
    assert policy.alpha == pytest.approx(7 / 10)
    smoothed = make_policy("goodput:beta=0.5")
    smoothed.observe(chain_outcome([2, 2, 0], [2, 2, 0]))  # the 0-chain request carries no evidence
    # acc = 0.5·0.6 + 0.5·2 = 1.3, trials = 0.5·1 + 0.5·2 = 1.5
    assert smoothed.alpha == pytest.approx(1.3 / 1.5)


def test_goodput_rate_converges_on_a_geometric_history():
    rng = np.random.default_rng(0)
    policy = make_policy("goodput")
    for _ in range(60):
        accepted = np.minimum(rng.geometric(1 - 0.8, size=400) - 1, 5)  # i.i.d. acceptance 0.8, chain 5
        policy.observe(chain_outcome([5] * 400, list(accepted)))
    assert policy.alpha == pytest.approx(0.8, abs=0.02)


def brute_force_chain_length(cost: FakeCost, alpha: float, k_max: int, bs: int) -> int:
    best, best_rate = 0, -1.0
    for k in range(k_max + 1):
        tokens = sum(alpha**i for i in range(k + 1))
        verify = bs * (1 + k)
        bucket = cost.graph_bucket(verify)
        seconds = float(cost.verify_time([bucket or verify], bs, 0, eager=bucket is None)[0])
        seconds += cost.draft_time(bs, k, 1) if k else 0.0
        if bs * tokens / seconds > best_rate:
            best, best_rate = k, bs * tokens / seconds
    return best


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.6, 0.9])
@pytest.mark.parametrize("bs", [1, 16, 256])
@pytest.mark.parametrize("cost", [FakeCost(knee=10**6, per_token=1e-9), FakeCost(knee=0, per_token=1e-4)],
                         ids=["memory-bound", "compute-bound"])
def test_goodput_picks_the_goodput_optimal_chain(alpha, bs, cost):
    policy = make_policy("goodput:alpha0=" + repr(alpha))
    lattices = full_lattices(3, bs, width=2, depth=2)
    step = replace(context(lattices, cost, draft=DraftShape(8, 1)), trace_depth=8)
    selection = policy.select(lattices, step)
    expected = brute_force_chain_length(cost, alpha, 8, bs)
    assert list(np.unique(selection.chain)) == [expected]
    assert policy.draft == DraftShape(expected, 1) and not selection.nodes.any()


def test_goodput_chains_stop_at_the_trace_depth_and_pay_the_prefill_chunk():
    lattices = full_lattices(3, 4, width=2, depth=2)
    free = FakeCost(knee=10**6, per_token=1e-9)
    policy = make_policy("goodput:alpha0=0.9")
    assert policy.best_length(replace(context(lattices, free), trace_depth=8)) == 8
    assert policy.best_length(context(lattices, free)) == 2  # the lattices are 2 deep
    # a long prefill chunk makes every candidate's step longer: a long chain's relative gain wins more
    costly = FakeCost(knee=0, per_token=1e-3, draft_per_level=1e-2)
    short = policy.best_length(replace(context(lattices, costly), trace_depth=8))
    long = policy.best_length(replace(context(lattices, costly), trace_depth=8, prefill_seconds=1.0))
    assert long > short


def test_goodput_chain_shrinks_with_load_and_with_acceptance():
    compute = FakeCost(knee=64, per_token=2e-5, base=5e-3, draft_per_level=5e-4)
    lengths = {}
    for alpha in (0.5, 0.9):
        for bs in (1, 32, 256):
            lattices = full_lattices(bs, bs, width=2, depth=2)
            policy = make_policy(f"goodput:alpha0={alpha}")
            lengths[alpha, bs] = policy.best_length(replace(context(lattices, compute), trace_depth=8))
    assert lengths[0.9, 1] > lengths[0.9, 256] and lengths[0.5, 1] > lengths[0.5, 256]
    assert all(lengths[0.9, bs] >= lengths[0.5, bs] for bs in (1, 32, 256))
    assert lengths[0.9, 1] == 8


def test_goodput_never_verifies_more_than_was_drafted():
    policy = make_policy("goodput:alpha0=0.95")
    lattices = full_lattices(4, 4, width=2, depth=2)
    step = replace(context(lattices, FakeCost(knee=10**6), draft=DraftShape(2, 1)), trace_depth=8)
    selection = policy.select(lattices, step)
    assert list(selection.chain) == [2] * 4 and policy.draft.depth == 8
