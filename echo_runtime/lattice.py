"""Draft lattices for every position of one request, grown level by level in batched forwards.

TRACES.md "Lattice growth" (the SGLang / EAGLE-2 drafter), width k, depth S:
  level 1      the draft's top-k tokens at the root (prefix prompt + y_<t);
  level l + 1  each of the k frontier nodes gets its top-k children (k² candidates, all stored);
               the k candidates with the highest cumulative score form the next frontier.
Cumulative score = product of the draft's conditional probabilities along the path (float32).
Ties: children follow torch.topk order; the frontier takes the k best scores, lower candidate
index first on equal scores (stable sort).

Batching rule that makes this one forward per level for ALL positions of the request: the draft's
KV cache holds the teacher-forced prefix prompt + y_0 … y_{L-2} (C0 = n0 + L - 1 entries), then
each level's frontier (L·k entries per level, position-major). A frontier node of position t at
depth d has position id n0 + t + d - 1 and attends to the prefix's first n0 + t entries, to its
ancestors' entries and to its own entry — exactly the context a drafter at position t sees.

Node layout of one lattice (M = k + (S-1)k² nodes, level order): level 1 at 0 … k-1; level l ≥ 2
at k + (l-2)k² + p·k + c for frontier slot p and child rank c (parents are always earlier).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

SPINE_TOP = 16  # draft_rank is the rank of y_t among the draft's top-16 (TRACES.md)


@dataclass(frozen=True)
class RequestLattices:
    """Lattices and spine statistics of one request with L positions, M nodes per lattice.

    Shape: token int32 [L, M]; parent int32 [L, M] (local, -1 = child of the root);
    depth int32 [M] (same for every position); cond_prob, score float32 [L, M]; on_path bool [L, M];
    draft_rank int16 [L]; draft_prob float32 [L].
    """

    token: np.ndarray
    parent: np.ndarray
    depth: np.ndarray
    cond_prob: np.ndarray
    score: np.ndarray
    on_path: np.ndarray
    draft_rank: np.ndarray
    draft_prob: np.ndarray


def nodes_per_lattice(width: int, depth: int) -> int:
    return width + (depth - 1) * width * width


def node_depths(width: int, depth: int) -> np.ndarray:
    """int32 [M]: depth of each node slot in the fixed level-order layout."""
    sizes = [width] + [width * width] * (depth - 1)
    return np.repeat(np.arange(1, depth + 1), sizes).astype(np.int32)


def top_children(logits: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The draft's top-`width` tokens and their probabilities. Shape: logits [Q, V] -> [Q, width] x2."""
    probs = torch.softmax(logits.float(), dim=-1)
    top = torch.topk(probs, width, dim=-1)
    return top.indices, top.values


def spine_stats(root_logits: torch.Tensor, y: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Rank of y_t in the draft's top-16 (-1 if absent) and the draft's probability of y_t.

    Shape: root_logits [L, V], y [L] -> int16 [L], float32 [L].
    """
    probs = torch.softmax(root_logits.float(), dim=-1)
    top = torch.topk(probs, min(SPINE_TOP, probs.shape[-1]), dim=-1).indices
    hit = top == y[:, None]
    rank = torch.where(hit.any(dim=-1), hit.int().argmax(dim=-1), torch.tensor(-1))
    prob = probs.gather(1, y[:, None])[:, 0]
    return rank.numpy().astype(np.int16), prob.numpy().astype(np.float32)


def label_on_path(token: np.ndarray, parent: np.ndarray, depth: np.ndarray, y: np.ndarray) -> np.ndarray:
    """bool [L, M]: the node's path spells y_t … y_{t+d-1} (computed from tokens, level by level)."""
    length, m = token.shape
    target_index = np.arange(length)[:, None] + depth[None, :] - 1  # position the node would fill
    in_range = target_index < length
    matches = in_range & (token == y[np.minimum(target_index, length - 1)])
    on_path = np.zeros((length, m), dtype=bool)
    rows = np.arange(length)[:, None]
    for level in range(1, int(depth.max()) + 1):
        cols = np.flatnonzero(depth == level)
        par = parent[:, cols]
        parent_ok = np.where(par < 0, True, on_path[rows, np.maximum(par, 0)])
        on_path[:, cols] = matches[:, cols] & parent_ok
    return on_path


def teacher_forced_root_logits(draft, prompt_ids: torch.Tensor, y: torch.Tensor):
    """One draft pass over prompt + y_0 … y_{L-2}: the root distributions of all L positions.

    Shape: prompt_ids [n0], y [L] -> logits [L, V] and the DynamicCache (n0 + L - 1 entries).
    """
    from transformers import DynamicCache

    cache = DynamicCache(config=draft.config)
    ids = torch.cat([prompt_ids, y[:-1]])[None, :]
    out = draft(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=len(y))
    return out.logits[0], out.cache


def level_mask(prompt_len: int, length: int, width: int, ancestors: torch.Tensor,
               cache_len: int, dtype: torch.dtype) -> torch.Tensor:
    """Additive 4D mask for one level's frontier forward.

    ancestors [L, k, m]: frontier slot of each node's ancestor at levels 1 … m (the last is itself).
    Keys: the prefix (cache_len entries) then m blocks of L·k frontier entries.
    Shape: -> [1, 1, L·k, cache_len + m·L·k]; 0 where attended, dtype's min elsewhere.
    """
    levels = ancestors.shape[-1]
    queries = length * width
    position = torch.arange(length).repeat_interleave(width)  # t of each query
    allowed = torch.zeros(queries, cache_len + levels * queries, dtype=torch.bool)
    allowed[:, :cache_len] = torch.arange(cache_len)[None, :] < (prompt_len + position)[:, None]
    block_start = cache_len + torch.arange(levels) * queries  # [m]
    columns = block_start[None, :] + position[:, None] * width + ancestors.reshape(queries, levels)
    allowed.scatter_(1, columns, True)
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[None, None]


@torch.inference_mode()
def grow_request_lattices(draft, prompt_ids: torch.Tensor, y: torch.Tensor,
                          width: int, depth: int) -> RequestLattices:
    """Every position's lattice of one request (module docstring). Shape: prompt_ids [n0], y [L]."""
    length, n0, k = len(y), len(prompt_ids), width
    root_logits, cache = teacher_forced_root_logits(draft, prompt_ids, y)
    cache_len = n0 + length - 1
    m_nodes = nodes_per_lattice(k, depth)
    token = np.zeros((length, m_nodes), dtype=np.int32)
    parent = np.full((length, m_nodes), -1, dtype=np.int32)
    cond = np.zeros((length, m_nodes), dtype=np.float32)
    score = np.zeros((length, m_nodes), dtype=np.float32)

    frontier_token, frontier_score = top_children(root_logits, k)  # level 1: [L, k]
    token[:, :k], cond[:, :k], score[:, :k] = frontier_token, frontier_score, frontier_score
    frontier_local = torch.arange(k).expand(length, k)  # local node index of each frontier slot
    ancestors = torch.arange(k).expand(length, k)[..., None]  # [L, k, 1]
    for level in range(2, depth + 1):
        positions = (n0 + torch.arange(length) + level - 2).repeat_interleave(k)[None, :]
        mask = level_mask(n0, length, k, ancestors, cache_len, draft.dtype)
        out = draft(input_ids=frontier_token.reshape(1, -1), position_ids=positions,
                    attention_mask=mask, cache=cache, use_cache=True)
        child_token, child_prob = top_children(out.logits[0], k)  # [L·k, k]
        child_token, child_prob = child_token.reshape(length, k * k), child_prob.reshape(length, k * k)
        child_score = (frontier_score[:, :, None] * child_prob.reshape(length, k, k)).reshape(length, k * k)
        base = k + (level - 2) * k * k
        cols = slice(base, base + k * k)
        token[:, cols], cond[:, cols], score[:, cols] = child_token, child_prob, child_score
        parent[:, cols] = frontier_local.repeat_interleave(k, dim=1)
        best = torch.sort(child_score, dim=1, descending=True, stable=True).indices[:, :k]  # [L, k]
        frontier_token, frontier_score = child_token.gather(1, best), child_score.gather(1, best)
        frontier_local = base + best
        ancestors = torch.cat([ancestors.gather(1, (best // k)[..., None].expand(-1, -1, level - 1)),
                               torch.arange(k).expand(length, k)[..., None]], dim=-1)
    depths = node_depths(k, depth)
    y_np = y.numpy().astype(np.int32)
    rank, prob = spine_stats(root_logits, y)
    return RequestLattices(token, parent, depths, cond, score,
                           label_on_path(token, parent, depths, y_np), rank, prob)
