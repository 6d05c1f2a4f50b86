"""Random but valid acceptance traces for tests (hypothesis strategies and unit tests share it), and a
policy wrapper that records every call both engines make.

The lattices follow TRACES.md's growth rule (level 1: k children of the root; each next level: the
k² children of the k best nodes of the previous level by cumulative score, all stored), with random draft probabilities and a
target path that agrees with the draft's top choice with probability `agreement`.
"""

from __future__ import annotations

import copy

import numpy as np

from echo_sim.traces.format import FORMAT_VERSION, TraceSet


def _child_probs(rng: np.random.Generator, k: int, vocab: int) -> tuple[np.ndarray, np.ndarray]:
    """k distinct tokens with descending conditional probabilities summing to < 1."""
    tokens = rng.choice(vocab, size=k, replace=False)
    probs = np.sort(rng.dirichlet(np.ones(k + 1)))[::-1][:k]
    return tokens.astype(np.int32), probs.astype(np.float32)


def _grow_lattice(rng, y, t, k, depth, vocab, agreement):
    tokens, parents, depths, conds, scores = [], [], [], [], []

    def children(parent_index, parent_depth, parent_score, on_path_parent):
        toks, probs = _child_probs(rng, k, vocab)
        target_pos = t + parent_depth
        if on_path_parent and target_pos < len(y) and rng.random() < agreement:
            slot = 0 if rng.random() < 0.7 else int(rng.integers(k))
            toks[toks == y[target_pos]] = (y[target_pos] + 1) % vocab  # keep siblings distinct
            toks[slot] = y[target_pos]
        return [(tok, parent_index, parent_depth + 1, p, parent_score * p) for tok, p in zip(toks, probs)]

    def on_path_of(index):
        # recomputed from tokens, so it is exactly the TRACES.md definition
        node_depth = depths[index]
        pos = t + node_depth - 1
        if pos >= len(y) or tokens[index] != y[pos]:
            return False
        return parents[index] == -1 or on_path_of(parents[index])

    # Every candidate is stored (k at level 1, k² below); only the k best by score are expanded.
    level_nodes = children(-1, 0, 1.0, True)
    for level in range(1, depth + 1):
        base = len(tokens)
        for tok, par, dep, cond, score in level_nodes:
            tokens.append(tok), parents.append(par), depths.append(dep), conds.append(cond), scores.append(score)
        if level == depth:
            break
        frontier = sorted(range(base, len(tokens)), key=lambda i: -scores[i])[:k]
        level_nodes = []
        for i in frontier:
            level_nodes += children(i, depths[i], scores[i], on_path_of(i))
    on_path = [on_path_of(i) for i in range(len(tokens))]
    return tokens, parents, depths, conds, scores, on_path


def random_trace(
    rng: np.random.Generator,
    num_requests: int = 3,
    output_len: tuple[int, int] = (4, 12),
    width: int = 2,
    depth: int = 3,
    vocab: int = 40,
    agreement: float = 0.7,
) -> TraceSet:
    """A small valid TraceSet with random lattices (level order, parents earlier, on_path exact)."""
    out_lens = rng.integers(output_len[0], output_len[1] + 1, size=num_requests).astype(np.int32)
    position_offsets = np.concatenate(([0], np.cumsum(out_lens))).astype(np.int64)
    targets, ranks, node_offsets = [], [], [0]
    columns = {name: [] for name in ("token", "parent", "depth", "cond", "score", "on_path")}
    for length in out_lens:
        y = rng.integers(0, vocab, size=length).astype(np.int32)
        targets.append(y)
        for t in range(length):
            lattice = _grow_lattice(rng, y, t, width, depth, vocab, agreement)
            for name, values in zip(columns, lattice):
                columns[name] += values
            node_offsets.append(node_offsets[-1] + len(lattice[0]))
            level1 = [i for i, d in enumerate(lattice[2]) if d == 1]
            level1_tokens = [lattice[0][i] for i in level1]
            ranks.append(level1_tokens.index(y[t]) if y[t] in level1_tokens else -1)
    header = {
        "format_version": FORMAT_VERSION,
        "generator": "echo_sim.testing.random_trace",
        "draft_model": "random",
        "target_model": "random",
        "width": width,
        "depth": depth,
        "decoding": "greedy",
        "absent_columns": ["target_prob"],
    }
    return TraceSet(
        header=header,
        request_ids=[f"r{i}" for i in range(num_requests)],
        prompt_len=rng.integers(8, 64, size=num_requests).astype(np.int32),
        output_len=out_lens,
        position_offsets=position_offsets,
        target_token=np.concatenate(targets),
        draft_rank=np.asarray(ranks, dtype=np.int16),
        draft_prob=rng.random(len(ranks)).astype(np.float32),
        node_offsets=np.asarray(node_offsets, dtype=np.int64),
        node_token=np.asarray(columns["token"], dtype=np.int32),
        node_parent=np.asarray(columns["parent"], dtype=np.int32),
        node_depth=np.asarray(columns["depth"], dtype=np.int32),
        node_cond_prob=np.asarray(columns["cond"], dtype=np.float32),
        node_score=np.asarray(columns["score"], dtype=np.float32),
        node_on_path=np.asarray(columns["on_path"], dtype=bool),
    )


def sorted_probs(rng: np.random.Generator, rows: int, k: int, alpha: float) -> np.ndarray:
    """float32 [rows, k]: the k most likely next tokens' probabilities, descending (mass < 1)."""
    gamma = rng.gamma(alpha, size=(rows, k + 1))
    probs = gamma / gamma.sum(axis=1, keepdims=True)
    return -np.sort(-probs[:, :k], axis=1)


def pick_child(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """int [rows]: the target's token among these children, chosen with the draft's probability
    (a calibrated draft); k when it is none of them."""
    return (rng.random(len(probs))[:, None] >= np.cumsum(probs, axis=1)).sum(axis=1)


def full_trace(seed: int = 0, requests: int = 32, positions: int = 1024, k: int = 4, depth: int = 6,
                    alpha: float = 0.25) -> TraceSet:
    """A TraceSet with every candidate stored, as the shipped traces have (TRACES.md growth rule),
    vectorised over all positions: level 1 holds k nodes, each later level k² (the children of the
    previous level's k best nodes by score), k + (depth − 1)·k² nodes per lattice. The draft is
    calibrated: the target's token is each child with the draft's probability (alpha: Dirichlet
    concentration of the draft's distributions; smaller is more confident).

    Layout per position (as echo_runtime.lattice): level 1 at 0…k-1; level l >= 2 at
    k + (l-2)k² + p·k + c for frontier slot p (best first) and child rank c.
    """
    rng = np.random.default_rng(seed)
    count = requests * positions
    m = k + (depth - 1) * k * k
    parent = np.full((count, m), -1, dtype=np.int32)
    level = np.zeros((count, m), dtype=np.int32)
    cond = np.zeros((count, m), dtype=np.float32)
    score = np.zeros((count, m), dtype=np.float32)
    on_path = np.zeros((count, m), dtype=bool)
    rows = np.arange(count)
    cond[:, :k] = score[:, :k] = sorted_probs(rng, count, k, alpha)
    level[:, :k] = 1
    hit = pick_child(rng, cond[:, :k])
    on_path[rows[hit < k], hit[hit < k]] = True
    frontier = np.tile(np.arange(k), (count, 1))  # local index of each frontier slot
    for depth_l in range(2, depth + 1):
        base = k + (depth_l - 2) * k * k
        cols = slice(base, base + k * k)
        child = sorted_probs(rng, count * k, k, alpha).reshape(count, k, k)
        cond[:, cols] = child.reshape(count, k * k)
        score[:, cols] = (np.take_along_axis(score, frontier, axis=1)[:, :, None] * child).reshape(count, k * k)
        parent[:, cols] = np.repeat(frontier, k, axis=1)
        level[:, cols] = depth_l
        on_slot = np.take_along_axis(on_path, frontier, axis=1)  # which frontier node is on-path
        has = on_slot.any(axis=1)
        slot = on_slot.argmax(axis=1)
        pick = pick_child(rng, child[rows, slot])
        ok = has & (pick < k)
        on_path[rows[ok], base + slot[ok] * k + pick[ok]] = True
        best = np.argsort(-score[:, cols], axis=1, kind="stable")[:, :k]
        frontier = base + best
    rank = np.where(hit < k, hit, np.where(rng.random(count) < 0.5, rng.integers(k, 16, count), -1))
    offsets = np.arange(count + 1, dtype=np.int64) * m
    lengths = np.full(requests, positions, dtype=np.int32)
    header = {"format_version": 1, "generator": "echo_sim.testing.full_trace", "width": k,
              "depth": depth, "draft_model": f"synthetic(alpha={alpha})", "target_model": "synthetic",
              "decoding": "greedy", "absent_columns": ["target_prob"]}
    return TraceSet(
        header=header, request_ids=[f"s{i}" for i in range(requests)],
        prompt_len=np.full(requests, 128, dtype=np.int32), output_len=lengths,
        position_offsets=np.arange(requests + 1, dtype=np.int64) * positions,
        target_token=np.zeros(count, dtype=np.int32), draft_rank=rank.astype(np.int16),
        draft_prob=np.zeros(count, dtype=np.float32), node_offsets=offsets,
        node_token=np.tile(np.arange(m, dtype=np.int32), count), node_parent=parent.ravel(),
        node_depth=level.ravel(), node_cond_prob=cond.ravel(), node_score=score.ravel(),
        node_on_path=on_path.ravel(), path="synthetic",
    )


class RecordingPolicy:
    """Passes every call through to a real policy and records it, one dict per step:
    {"draft", "lattices", "context", "selection" (a copy), "outcome"}. Everything else the engines
    read (name, label, needs_future, …) is the wrapped policy's."""

    def __init__(self, policy) -> None:
        self.policy = policy
        self.steps: list[dict] = []

    def __getattr__(self, name):
        return getattr(self.policy, name)

    @property
    def draft(self):
        return self.policy.draft

    def select(self, lattices, context):
        draft = self.policy.draft
        selection = self.policy.select(lattices, context)
        self.steps.append({"draft": draft, "lattices": lattices, "context": context,
                           "selection": copy.deepcopy(selection)})
        return selection

    def observe(self, outcome) -> None:
        self.steps[-1]["outcome"] = outcome
        self.policy.observe(outcome)
