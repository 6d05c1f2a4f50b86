"""Greedy replay: hand-computed tiny traces and a token-level brute force on random traces."""

from __future__ import annotations

import numpy as np
import pytest

from echo_sim.traces.replay import calibration_table, replay_chain, replay_static
from echo_sim.testing import random_trace
from echo_sim.traces.format import TraceSet, validate_trace

# Hand trace: k=2, S=2 lattices, nodes (token, parent, depth, score, on_path) per position.
# Request "c": y = 1 2 3 4 5 (L=5); request "d": y = 7 8 (L=2).
C_LATTICES = [
    [(1, -1, 1, .9, True), (3, -1, 1, .05, False), (2, 0, 2, .45, True), (0, 0, 2, .36, False)],  # t=0
    [(2, -1, 1, .6, True), (9, -1, 1, .3, False), (3, 0, 2, .3, True), (8, 1, 2, .27, False)],  # t=1 tie .3
    [(3, -1, 1, .8, True), (0, -1, 1, .1, False), (4, 0, 2, .72, True), (6, 0, 2, .04, False)],  # t=2
    [(7, -1, 1, .5, False), (4, -1, 1, .4, True), (5, 0, 2, .45, False), (5, 1, 2, .2, True)],  # t=3
    [(5, -1, 1, .7, True), (6, -1, 1, .2, False), (1, 0, 2, .35, False), (2, 0, 2, .07, False)],  # t=4
]
D_LATTICES = [
    [(7, -1, 1, .6, True), (2, -1, 1, .3, False), (8, 0, 2, .3, True), (4, 1, 2, .03, False)],  # t=0
    [(8, -1, 1, .9, True), (3, -1, 1, .05, False), (9, 0, 2, .45, False), (1, 1, 2, .025, False)],  # t=1
]
C_RANKS, D_RANKS = [0, 0, 0, 1, 0], [0, 0]  # spine: c = 3 2 1 0 1, d = 2 1


def build_trace(targets, ranks, lattices) -> TraceSet:
    nodes = [node for request in lattices for lattice in request for node in lattice]
    counts = [len(lattice) for request in lattices for lattice in request]
    token, parent, depth, score, on_path = (np.array(column) for column in zip(*nodes))
    lengths = np.array([len(y) for y in targets], np.int32)
    trace = TraceSet(
        header={"format_version": 1, "generator": "hand", "draft_model": "d", "target_model": "t",
                "width": 2, "depth": 2, "decoding": "greedy", "absent_columns": ["draft_prob", "target_prob"]},
        request_ids=[f"q{i}" for i in range(len(targets))], prompt_len=np.full(len(targets), 4, np.int32),
        output_len=lengths, position_offsets=np.concatenate(([0], np.cumsum(lengths))),
        target_token=np.concatenate(targets).astype(np.int32), draft_rank=np.concatenate(ranks).astype(np.int16),
        node_offsets=np.concatenate(([0], np.cumsum(counts))), node_token=token.astype(np.int32),
        node_parent=parent.astype(np.int32), node_depth=depth.astype(np.int32),
        node_cond_prob=score.astype(np.float32), node_score=score.astype(np.float32), node_on_path=on_path,
    )
    validate_trace(trace)  # the hand-written on_path labels agree with the target tokens
    return trace


def hand_trace() -> TraceSet:
    return build_trace([[1, 2, 3, 4, 5], [7, 8]], [C_RANKS, D_RANKS], [C_LATTICES, D_LATTICES])


def steps_of(replay, r):
    position, accepted = replay.request(r)
    return list(zip(position.tolist(), accepted.tolist()))


def test_chain_replay_by_hand():
    trace = hand_trace()
    # k=1, c: t=1 a=1 (+2) -> t=3 a=0 (+1) -> t=4 a=1 but L-t=1 (+1); d: t=1 a=1, L-t=1 (+1)
    k1 = replay_chain(trace, 1)
    assert steps_of(k1, 0) == [(1, 1), (3, 0), (4, 1)] and steps_of(k1, 1) == [(1, 1)]
    assert k1.committed.tolist() == [2, 1, 1, 1]
    assert k1.tau == pytest.approx(5 / 4)
    # k=2: c: t=1 a=2 (+3) -> t=4 a=1 (+1); d as before
    k2 = replay_chain(trace, 2)
    assert steps_of(k2, 0) == [(1, 2), (4, 1)]
    assert k2.steps.tolist() == [2, 1] and k2.committed_per_request.tolist() == [4, 1]
    assert k2.tau == pytest.approx(5 / 3)
    assert replay_chain(trace, None).tau == pytest.approx(5 / 3)
    assert replay_chain(trace, 0).tau == pytest.approx(1.0)  # autoregressive


def test_chain_replay_conventions_for_published_logs():
    from test_traces import chain_only_trace

    trace = chain_only_trace()  # a: spine 0 3 2 1 0 5 (L=6); b: spine 0 1 0 (L=3)
    # default: a: t=1 a=3 (+4) -> t=5 a=min(5, 1) (+1); b: t=1 a=1 (+1, L-t=2 -> +2)
    ours = replay_chain(trace, None)
    assert steps_of(ours, 0) == [(1, 3), (5, 1)] and steps_of(ours, 1) == [(1, 1)]
    assert ours.committed.tolist() == [4, 1, 2]
    # published convention: start at t=0 (prefill step), last step not capped
    # a: t=0 a=0 (+1) -> t=1 a=3 (+4) -> t=5 a=5 (+6); b: t=0 (+1) -> t=1 a=1 (+2)
    theirs = replay_chain(trace, None, start=0, cap_at_end=False)
    assert theirs.committed.tolist() == [1, 4, 6, 1, 2]
    assert theirs.tau == pytest.approx(14 / 5)
    # chain k=2 with that convention: a: +1, t=1 a=2 (+3) -> t=4 a=0 (+1) -> t=5 a=2 (+3); b: +1, +2
    assert replay_chain(trace, 2, start=0, cap_at_end=False).committed.tolist() == [1, 3, 1, 3, 1, 2]


def test_static_replay_by_hand():
    trace = hand_trace()
    # N=2 (top-1 node): c: t=1 {n0} a=1 -> t=3 {n0 off} a=0 -> t=4 {n0} a=1 (+1, end); d: t=1 a=1
    n2 = replay_static(trace, 2)
    assert steps_of(n2, 0) == [(1, 1), (3, 0), (4, 1)] and steps_of(n2, 1) == [(1, 1)]
    # N=3: at t=1 the second pick is a tie at .3 between n1 (depth 1) and n2 (depth 2): depth asc
    # picks n1 (off-path) so a=1, not 2. At t=3 top-2 = {n0 .5, n2 .45}, both off: a=0.
    n3 = replay_static(trace, 3)
    assert steps_of(n3, 0) == [(1, 1), (3, 0), (4, 1)]
    # N=4: t=1 top-3 = {n0, n1, n2} a=2 (+3) -> t=4 top-3 = {n0, n2, n1} a=1 (+1)
    n4 = replay_static(trace, 4)
    assert steps_of(n4, 0) == [(1, 2), (4, 1)] and n4.committed.tolist() == [3, 1, 1]
    assert n4.tau == pytest.approx(5 / 3)
    assert replay_static(trace, 1).steps.tolist() == [4, 1]  # roots only: one token per step
    assert replay_static(trace, 64).tau == pytest.approx(5 / 3)


def test_calibration_table_by_hand():
    rows = calibration_table(hand_trace(), edges=(0.0, 0.25, 0.5, 1.0))
    # scores < .25: c .05 .1 .04 .2(on) .2 .07, d .03 .05 .025 -> 9 nodes, 1 on-path
    # [.25, .5): c .45(on) .36 .3 .3(on) .27 .4(on) .45 .35, d .3 .3(on) .45 -> 11 nodes, 4 on-path
    # [.5, 1]: c .9 .6 .8 .72 .5(off) .7, d .6 .9 -> 8 nodes, 7 on-path
    assert [(r.nodes, r.on_path) for r in rows] == [(9, 1), (11, 4), (8, 7)]
    assert rows[2].on_path_rate == pytest.approx(7 / 8)
    empty = calibration_table(hand_trace(), edges=(0.0, 0.01, 1.0))[0]
    assert empty.nodes == 0 and empty.on_path_rate is None


# ------------------------------------------------------------------- brute force, token by token


def brute_chain(trace, k):
    steps = []
    for r in range(trace.num_requests):
        base, length, t = trace.position_offsets[r], trace.output_len[r], 1
        ranks = trace.draft_rank[base:base + length]
        while t < length:
            a = 0
            while a < k and t + a < length and ranks[t + a] == 0:
                a += 1
            steps.append((r, t, a))
            t += min(a + 1, length - t)
    return steps


def accepted_depth_by_tokens(trace, r, t, budget):
    """Select the top-`budget` nodes by (score desc, depth asc, index asc); accept by comparing tokens."""
    p = trace.position_offsets[r] + t
    lo, hi = trace.node_offsets[p], trace.node_offsets[p + 1]
    y = trace.target_token[trace.position_offsets[r]:trace.position_offsets[r + 1]]
    order = sorted(range(hi - lo), key=lambda j: (-trace.node_score[lo + j], trace.node_depth[lo + j], j))
    chosen = set(order[:budget])
    best = 0
    for j in chosen:
        path, node = [], j
        while node != -1:
            path.append(node)
            node = trace.node_parent[lo + node]
        path.reverse()  # root child first
        spells = all(t + i < len(y) and trace.node_token[lo + n] == y[t + i] for i, n in enumerate(path))
        if spells and all(n in chosen for n in path):
            best = max(best, len(path))
    return best


def brute_static(trace, n_tokens):
    steps = []
    for r in range(trace.num_requests):
        length, t = trace.output_len[r], 1
        while t < length:
            a = accepted_depth_by_tokens(trace, r, t, n_tokens - 1)
            steps.append((r, t, a))
            t += min(a + 1, length - t)
    return steps


def flat_steps(replay):
    rows = np.repeat(np.arange(len(replay.steps)), replay.steps)
    return list(zip(rows.tolist(), replay.position.tolist(), replay.accepted.tolist()))


@pytest.mark.parametrize("seed", range(6))
def test_replay_matches_token_level_brute_force(seed):
    rng = np.random.default_rng(seed)
    trace = random_trace(rng, num_requests=4, output_len=(5, 25), width=int(rng.integers(2, 4)),
                         depth=int(rng.integers(2, 5)), vocab=30, agreement=0.8)
    for k in (1, 2, 3, 5, 8):
        assert flat_steps(replay_chain(trace, k)) == brute_chain(trace, k), k
    for n in (2, 3, 4, 6, 9, 16):
        assert flat_steps(replay_static(trace, n)) == brute_static(trace, n), n


def test_chain_only_trace_has_no_static_replay():
    from test_traces import chain_only_trace

    with pytest.raises(ValueError, match="chain-only"):
        replay_static(chain_only_trace(), 8)
