"""Batched draft-lattice growth on a KV cache (TRACES.md "Lattice growth", SGLang/EAGLE-2).

Level 1: one draft forward over each request's pending tokens (committed tokens whose draft K/V
is not cached yet, ending with the root); the root's top-k tokens are the level-1 nodes and the
pending tokens join the draft's prefix. Level l+1: one forward over the k frontier nodes of every
request (tree mask over the draft scratch); each gets its top-k children (k² candidates, all kept
in the lattice); the k candidates with the highest cumulative score form the next frontier.
Forwards: 1 over ≤ 2·bs tokens + (S − 1) over bs·k tokens, what COST_MODEL.md's T_draft counts.

An expand rule (echo's expand gate) may keep frontier nodes from being forwarded: their children
are never drafted, a level's forward runs only the expanded nodes (ragged levels), and growth
stops at the first level where no request expands anything. Since a score never increases along
a path, the candidates the gate lets through are the same as in the ungated beam: the expanded
nodes are the ungated beam's frontier nodes that pass the gate, what the simulator's reader and
echo's gate keep (echo_sim.policies.echo.EchoPolicy.drafter_expands).

Node order inside a lattice: level by level; inside a level, candidates in (frontier node, child
rank) order, frontier nodes best first (score desc, ties to the earlier candidate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from echo_runtime.forward import TreeRow, chain_row, next_token_logits, tree_forward
from echo_runtime.kv_cache import KVCache
from echo_sim.trees import ROOT_PARENT, LatticeBatch

NOT_FORWARDED = -1


@dataclass(frozen=True)
class Lattice:
    """One request's lattice at its current position, with where the drafter stored each node.

    Shape (n nodes, level order): token, parent (local, ROOT_PARENT = root child), depth int64 [n];
    cond_prob, score float32 [n]; scratch int64 [n]: draft scratch index of the node's K/V,
    NOT_FORWARDED for nodes the drafter never ran (the last level and non-frontier candidates).
    """

    token: np.ndarray
    parent: np.ndarray
    depth: np.ndarray
    cond_prob: np.ndarray
    score: np.ndarray
    scratch: np.ndarray

    @property
    def size(self) -> int:
        return len(self.token)


def empty_lattice() -> Lattice:
    """The lattice of a request that drafts nothing this step (`ar`)."""
    ints, floats = np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    return Lattice(token=ints, parent=ints, depth=ints, cond_prob=floats, score=floats, scratch=ints)


def lattice_batch(lattices: list[Lattice]) -> LatticeBatch:
    """The policies' view of the step (echo_sim.trees). on_path and spine_run are unknown before
    verification in a live run: they are False / 0, so no policy can peek at the target."""
    counts = [lat.size for lat in lattices]
    offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
    cat = lambda name, dtype: np.concatenate(  # noqa: E731
        [getattr(lat, name) for lat in lattices] or [np.zeros(0)]).astype(dtype)
    return LatticeBatch(
        offsets=offsets,
        token=cat("token", np.int32),
        parent=cat("parent", np.int32),
        depth=cat("depth", np.int32),
        cond_prob=cat("cond_prob", np.float32),
        score=cat("score", np.float32),
        on_path=np.zeros(int(offsets[-1]), dtype=bool),
        spine_run=np.zeros(len(lattices), dtype=np.int32),
    )


class _Growing:
    """Mutable per-request lattice under construction."""

    def __init__(self) -> None:
        self.token, self.parent, self.depth, self.cond, self.score, self.scratch = [], [], [], [], [], []
        self.ancestors: list[np.ndarray] = []  # scratch indices on the path of a forwarded node

    def add_level(self, tokens, parents, depth, conds, scores) -> np.ndarray:
        start = len(self.token)
        self.token += list(tokens)
        self.parent += list(parents)
        self.depth += [depth] * len(tokens)
        self.cond += list(conds)
        self.score += list(scores)
        self.scratch += [NOT_FORWARDED] * len(tokens)
        return np.arange(start, len(self.token))

    def frontier_row(self, slot: int, nodes: np.ndarray, root_position: int) -> TreeRow:
        """Assign scratch entries to the frontier nodes and build their tree row."""
        first = len(self.ancestors)
        paths = []
        for offset, node in enumerate(nodes):
            parent = self.parent[node]
            above = self.ancestors[self.scratch[parent]] if parent != ROOT_PARENT else np.zeros(0, np.int64)
            self.scratch[node] = first + offset
            paths.append(np.append(above, first + offset))
        self.ancestors += paths
        visible = np.zeros((len(nodes), len(self.ancestors)), dtype=bool)
        for i, path in enumerate(paths):
            visible[i, path] = True
        return TreeRow(
            slot=slot,
            tokens=np.asarray([self.token[n] for n in nodes], dtype=np.int64),
            positions=root_position + np.asarray([self.depth[n] for n in nodes], dtype=np.int64),
            scratch_index=first + np.arange(len(nodes), dtype=np.int64),
            visible=visible,
        )

    def freeze(self) -> Lattice:
        return Lattice(
            token=np.asarray(self.token, dtype=np.int64),
            parent=np.asarray(self.parent, dtype=np.int64),
            depth=np.asarray(self.depth, dtype=np.int64),
            cond_prob=np.asarray(self.cond, dtype=np.float32),
            score=np.asarray(self.score, dtype=np.float32),
            scratch=np.asarray(self.scratch, dtype=np.int64),
        )


def _top_children(model, hidden: torch.Tensor, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-`width` tokens and their probabilities. Shape: [t, width] each."""
    probs = torch.softmax(next_token_logits(model, hidden), dim=-1)
    values, tokens = torch.topk(probs, width, dim=-1)
    return tokens.cpu().numpy(), values.cpu().numpy().astype(np.float32)


def _next_frontier(scores: np.ndarray, width: int) -> np.ndarray:
    """Indices of the `width` best candidates, best first; ties -> earlier candidate."""
    order = np.lexsort((np.arange(len(scores)), -scores.astype(np.float64)))
    return order[:width]


def grow_lattices(draft, cache: KVCache, slots: np.ndarray, pending: list[np.ndarray],
                  width: int, depth: int, on_level=None, expand=None) -> list[Lattice]:
    """Grow one lattice per request (depth S >= 1, width k >= 1); pending tokens join the prefix.

    `on_level(level, tokens)` is called after each level's forward (timing hooks).
    `expand(lattices, frontiers) -> masks`: the expand rule, called before each level >= 2 with
    the lattices grown so far and each request's frontier (local node indices, best first); returns
    a bool mask per frontier of the nodes to forward (None: forward every frontier node)."""
    root_positions = cache.lengths[slots] + np.array([len(p) for p in pending]) - 1
    hidden = tree_forward(draft, cache, [chain_row(int(s), p, int(cache.lengths[s]))
                                         for s, p in zip(slots, pending)])
    last = np.cumsum([len(p) for p in pending]) - 1
    tokens, probs = _top_children(draft, hidden[torch.as_tensor(last, device=hidden.device)], width)
    cache.keep(slots, [np.arange(len(p)) for p in pending])
    if on_level:
        on_level(1, int(sum(len(p) for p in pending)))
    growing = [_Growing() for _ in slots]
    frontiers = []
    for r, lat in enumerate(growing):
        frontiers.append(lat.add_level(tokens[r], [ROOT_PARENT] * width, 1, probs[r], probs[r]))
    for level in range(2, depth + 1):
        if expand is not None:
            masks = expand([lat.freeze() for lat in growing], frontiers)
            frontiers = [f[np.asarray(m, dtype=bool)] for f, m in zip(frontiers, masks)]
        if not any(len(f) for f in frontiers):  # the gate stopped every request's growth
            break
        grow = [r for r, f in enumerate(frontiers) if len(f)]
        rows = [growing[r].frontier_row(int(slots[r]), frontiers[r], int(root_positions[r])) for r in grow]
        tokens, probs = _top_children(draft, tree_forward(draft, cache, rows), width)
        if on_level:
            on_level(level, int(sum(len(f) for f in frontiers)))
        start = 0
        for r in grow:
            lat, frontier = growing[r], frontiers[r]
            block = slice(start, start + len(frontier))
            start += len(frontier)
            parent_scores = np.asarray([lat.score[n] for n in frontier], dtype=np.float32)
            scores = (parent_scores[:, None] * probs[block]).reshape(-1)
            parents = np.repeat(frontier, width)
            nodes = lat.add_level(tokens[block].reshape(-1), parents, level,
                                  probs[block].reshape(-1), scores)
            frontiers[r] = nodes[_next_frontier(scores, width)]
    return [lat.freeze() for lat in growing]


def commit_draft(cache: KVCache, slots: np.ndarray, lattices: list[Lattice],
                 accepted_paths: list[np.ndarray], bonus: list[list[int]]) -> list[np.ndarray]:
    """Keep the draft K/V of the accepted path's forwarded prefix; return the new pending tokens
    per request (accepted nodes the drafter never ran, then the committed bonus tokens)."""
    kept, pending = [], []
    for lat, path, extra in zip(lattices, accepted_paths, bonus):
        path = np.asarray(path, dtype=np.int64)
        # trace replays verify the trace's nodes; ones outside the grown lattice have no draft K/V
        scratch = np.where(path < lat.size, lat.scratch[np.minimum(path, max(lat.size - 1, 0))]
                           if lat.size else NOT_FORWARDED, NOT_FORWARDED)
        forwarded = int(np.argmin(np.append(scratch, NOT_FORWARDED) != NOT_FORWARDED))
        kept.append(scratch[:forwarded])
        rest = lat.token[np.minimum(path[forwarded:], max(lat.size - 1, 0))] if lat.size else path[forwarded:]
        pending.append(np.concatenate([rest, np.asarray(extra, np.int64)]))
    cache.keep(slots, kept)
    return pending
