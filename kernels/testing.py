"""Random but valid kernel inputs, shared by the tests and benchmarks/kernels.py.

Every builder takes a torch.Generator (no global RNG). Sizes are (low, high) inclusive ranges so
tests draw ragged batches and benchmarks pass fixed sizes as (n, n). Storage that the kernels must
not read (cache rows past a prefix, unused pages) is filled with NaN so a stray read shows up.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from kernels._launch import INTERPRET
from kernels.tree_attention import TreeAttentionBatch, plan_tree_attention
from kernels.tree_masks import ancestor_masks
from kernels.tree_verify import VerifyTrees, plan_verify


def kernel_device() -> torch.device | None:
    """Where kernel tests run: CPU under the interpreter, else CUDA if present, else None (skip)."""
    if INTERPRET:
        return torch.device("cpu")
    return torch.device("cuda") if torch.cuda.is_available() else None


def fresh_seed() -> int:
    """A new seed per call, or KERNEL_TEST_SEED from the environment to replay a failure."""
    fixed = os.environ.get("KERNEL_TEST_SEED")
    return int(fixed) if fixed else int.from_bytes(os.urandom(4), "little")


def _draw(gen: torch.Generator, bounds: tuple[int, int], size: int) -> torch.Tensor:
    low, high = bounds
    return torch.randint(low, high + 1, (size,), generator=gen)


def random_offsets(gen: torch.Generator, batch_size: int, counts: tuple[int, int]) -> torch.Tensor:
    """int64 [bs + 1]: CSR offsets with per-request counts drawn from `counts`."""
    return torch.cat([torch.zeros(1, dtype=torch.int64), _draw(gen, counts, batch_size).cumsum(0)])


def random_parents(gen: torch.Generator, offsets: torch.Tensor, root_first: bool = True) -> torch.Tensor:
    """int32 [T]: level-ordered local parents. root_first: local 0 is the root (-1); else -1 = root child.

    Parents are drawn from the last few earlier nodes so trees get deep as well as wide.
    """
    parents = []
    for count in offsets.diff().tolist():
        for i in range(count):
            lowest = -1 if not root_first else 0
            if root_first and i == 0:
                parents.append(-1)
                continue
            start = max(lowest, i - 4)
            parents.append(int(torch.randint(start, i, (1,), generator=gen)))
    return torch.tensor(parents, dtype=torch.int32)


@dataclass(frozen=True)
class TreeAttentionCase:
    """Inputs of one tree_attention call plus the parents its masks came from (for independent checks)."""

    q: torch.Tensor
    k_tree: torch.Tensor
    v_tree: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    batch: TreeAttentionBatch
    parents: torch.Tensor

    def args(self) -> tuple:
        return self.q, self.k_tree, self.v_tree, self.k_cache, self.v_cache, self.batch


def _paged_cache(gen, kv_lens, page_size, shape_tail, dtype, device):
    """NaN-filled paged cache with a random block assignment; unused table entries are -1."""
    pages = [-(-int(n) // page_size) for n in kv_lens.tolist()]
    num_blocks = sum(pages) + 3                                    # spare blocks are never read
    order = torch.randperm(num_blocks, generator=gen)
    table = torch.full((len(pages), max(max(pages), 1)), -1, dtype=torch.int32)
    used = 0
    for r, count in enumerate(pages):
        table[r, :count] = order[used:used + count].to(torch.int32)
        used += count
    k = torch.full((num_blocks, page_size, *shape_tail), float("nan"), dtype=dtype, device=device)
    return k, k.clone(), table.to(device)


def _fill_prefix(gen, cache, batch_index_fn, kv_lens, shape_tail):
    for r, length in enumerate(kv_lens.tolist()):
        rows = batch_index_fn(r, length)
        cache[rows] = torch.randn((length, *shape_tail), generator=gen).to(cache.device, cache.dtype)


def random_tree_attention_case(
    gen: torch.Generator, *, batch_size: int, tree_tokens: tuple[int, int], kv_lens: tuple[int, int],
    num_heads: int, num_kv_heads: int, head_dim: int, dtype=torch.float32, paged: bool = False,
    page_size: int = 16, device="cpu",
) -> TreeAttentionCase:
    offsets = random_offsets(gen, batch_size, tree_tokens)
    parents = random_parents(gen, offsets)
    total = int(offsets[-1])
    lens = _draw(gen, kv_lens, batch_size)
    tail = (num_kv_heads, head_dim)

    def rand(*shape):
        return torch.randn(shape, generator=gen).to(device, dtype)

    if paged:
        k_cache, v_cache, table = _paged_cache(gen, lens, page_size, tail, dtype, device)
        pos = lambda r, n: (table[r, torch.arange(n, device=device) // page_size].long(),  # noqa: E731
                            torch.arange(n, device=device) % page_size)
    else:
        capacity = max(int(lens.max()) + 5, 1)
        k_cache = torch.full((batch_size, capacity, *tail), float("nan"), dtype=dtype, device=device)
        v_cache, table = k_cache.clone(), None
        pos = lambda r, n: (r, slice(0, n))  # noqa: E731
    _fill_prefix(gen, k_cache, pos, lens, tail)
    _fill_prefix(gen, v_cache, pos, lens, tail)
    masks = ancestor_masks(offsets, parents)
    batch = plan_tree_attention(offsets.to(device), masks.to(device), lens.to(device), k_cache, table)
    return TreeAttentionCase(rand(total, num_heads, head_dim), rand(total, *tail), rand(total, *tail),
                             k_cache, v_cache, batch, parents)


@dataclass(frozen=True)
class VerifyCase:
    """Trees plus greedy targets, target distributions and coins. Shape: target int64 [N];
    probs f32 [N, V]; uniforms f32 [bs, max_nodes]."""

    trees: VerifyTrees
    target: torch.Tensor
    probs: torch.Tensor
    uniforms: torch.Tensor


def _sibling_distinct_tokens(gen, parents: list[int], vocab: int) -> list[int]:
    tokens = [int(torch.randint(vocab, (1,), generator=gen))] + [0] * (len(parents) - 1)
    for node in range(len(parents)):
        kids = [c for c in range(node + 1, len(parents)) if parents[c] == node]
        for kid, tok in zip(kids, torch.randperm(vocab, generator=gen)[:len(kids)].tolist()):
            tokens[kid] = tok
    return tokens


def random_verify_case(gen: torch.Generator, *, batch_size: int, nodes: tuple[int, int], vocab: int,
                       agreement: float = 0.7, draft_boost: float = 2.0, device="cpu") -> VerifyCase:
    """Random trees (root first, distinct sibling tokens); the target agrees with some child w.p. `agreement`."""
    offsets = random_offsets(gen, batch_size, nodes)
    parents = random_parents(gen, offsets)
    tokens, target = [], []
    for r in range(batch_size):
        local = parents[int(offsets[r]):int(offsets[r + 1])].tolist()
        toks = _sibling_distinct_tokens(gen, local, vocab)
        for node in range(len(local)):
            kids = [toks[c] for c in range(node + 1, len(local)) if local[c] == node]
            agree = kids and float(torch.rand(1, generator=gen)) < agreement
            pick = torch.randint(len(kids) if agree else vocab, (1,), generator=gen)
            target.append(kids[int(pick)] if agree else int(pick))
        tokens += toks
    tokens_t = torch.tensor(tokens, dtype=torch.int64)
    logits = torch.randn(len(tokens), vocab, generator=gen) * 1.5
    global_parent = parents.long() + offsets[:-1].repeat_interleave(offsets.diff())
    has_parent = parents >= 0
    logits[global_parent[has_parent], tokens_t[has_parent]] += draft_boost   # drafts are often likely
    trees = plan_verify(offsets.to(device), parents.to(device), tokens_t.to(device))
    uniforms = torch.rand(batch_size, trees.max_nodes, generator=gen)
    return VerifyCase(trees, torch.tensor(target, dtype=torch.int64, device=device),
                      torch.softmax(logits, dim=1).to(device), uniforms.to(device))
