"""Acceptance walks over a ragged batch of verification trees: greedy and lossless sampling.

Layout (N = total tree nodes including roots, bs = requests):

    request r owns nodes offsets[r] : offsets[r + 1]; local node 0 is its root (the last
    committed token), every other node a draft token whose parent is an earlier local index.
    parents  int  [N]   local parent, -1 for the root
    tokens   int  [N]   each node's token (the root's is never compared)
    target   int  [N]   greedy: the target's argmax after each node's path
    probs    f32  [N, V] sampling: the target's next-token distribution after each node's path
    uniforms f32  [bs, max_nodes] sampling: coin of request r at level l is uniforms[r, l]

Greedy walk: from the root, move to the child whose token equals the target's argmax at the
current node (the lowest index if several do), until none does. Bonus = target[current node].

Sampling walk (draft treated as deterministic, lossless): at the current node with target
distribution p, children x_1 < … < x_k (by index, distinct tokens) and coin u, let
C_i = p(x_1) + … + p(x_i). Accept the first child with u < C_i and continue from it. If u >= C_k
the walk stops and the bonus token is the first v (ascending) with u − C_k < R(v), R the running
sum of p over tokens that are not children (the rejected siblings are removed from the
residual); if rounding leaves none, the non-child token of largest residual mass. Each emitted token
is thus distributed exactly as the target's p (the emitted sequence equals ancestral sampling).

Result per request: accepted draft nodes (local indices, path order, −1 padded), their count and
the bonus token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels._launch import (
    INDEX_DTYPES, KernelInputError, check_device, check_local_parents, check_offsets, check_tensor, next_pow2,
)
from kernels.tree_masks import local_index

MAX_NODES = 1024
VOCAB_TILE = 1024


@dataclass(frozen=True)
class VerifyTrees:
    """A validated batch of verification trees (module docstring). max_nodes and max_children are host ints.

    Shape: offsets int32 [bs + 1]; parents int32 [N]; tokens int [N].
    """

    offsets: torch.Tensor
    parents: torch.Tensor
    tokens: torch.Tensor
    max_nodes: int
    max_children: int

    @property
    def batch_size(self) -> int:
        return self.offsets.numel() - 1

    @property
    def num_nodes(self) -> int:
        return self.parents.numel()


@dataclass(frozen=True)
class VerifyResult:
    """Shape: accepted int32 [bs, max_nodes - 1] (−1 padded); accepted_len int32 [bs]; bonus_token int64 [bs]."""

    accepted: torch.Tensor
    accepted_len: torch.Tensor
    bonus_token: torch.Tensor


def plan_verify(offsets, parents, tokens) -> VerifyTrees:
    """Validate the trees (one host sync): offsets, level-ordered parents, distinct sibling tokens."""
    check_device({"offsets": offsets, "parents": parents, "tokens": tokens})
    check_tensor("parents", parents, ndim=1, dtypes=INDEX_DTYPES)
    check_tensor("tokens", tokens, ndim=1, dtypes=INDEX_DTYPES, shape=(parents.numel(),))
    max_nodes = check_offsets("offsets", offsets, parents.numel(), MAX_NODES)
    check_local_parents("parents", parents, offsets, root_first=True)
    host_parents = parents.detach().cpu().to(torch.int64)
    start = torch.arange(len(host_parents)) - local_index(offsets.detach().cpu())
    parent_row = torch.where(host_parents >= 0, host_parents + start, -1)
    child_rows = torch.nonzero(parent_row >= 0).flatten()
    pairs = torch.stack([parent_row[child_rows], tokens.detach().cpu().to(torch.int64)[child_rows]], dim=1)
    if len(torch.unique(pairs, dim=0)) != len(pairs):
        raise KernelInputError("tokens: two children of one node carry the same token (siblings must be distinct)")
    max_children = int(torch.bincount(parent_row[child_rows]).max()) if len(child_rows) else 0
    return VerifyTrees(offsets.to(torch.int32), parents.to(torch.int32), tokens, max_nodes, max_children)


@triton.jit
def _value_at(vector, index, positions):
    # vector[index] for a register vector (a masked reduction: Triton has no register gather)
    return tl.sum(tl.where(positions == index, vector, 0), axis=0)


@triton.jit
def _greedy_walk_kernel(OFFSETS, PARENTS, TOKENS, TARGET, ACCEPTED, ACCEPTED_LEN, BONUS,
                        stride_acc, width,
                        BLOCK: tl.constexpr):  # BLOCK >= nodes of any request
    r = tl.program_id(0)
    start = tl.load(OFFSETS + r)
    n = tl.minimum(tl.load(OFFSETS + r + 1) - start, BLOCK)
    i = tl.arange(0, BLOCK)
    ok = i < n
    parent = tl.load(PARENTS + start + i, mask=ok, other=-2)
    token = tl.load(TOKENS + start + i, mask=ok, other=-1)
    target = tl.load(TARGET + start + i, mask=ok, other=-1)
    out_row = ACCEPTED + r.to(tl.int64) * stride_acc
    tl.store(out_row + i, tl.full([BLOCK], -1, tl.int32), mask=i < width)
    cur = tl.full([], 0, tl.int32)
    length = tl.full([], 0, tl.int32)
    want = _value_at(target, 0, i)
    found = n > 1
    while found:
        # children have larger indices (level order); requiring it also bounds the loop on bad input
        match = ok & (parent == cur) & (i > cur) & (token == want)
        child = tl.min(tl.where(match, i, BLOCK), axis=0)
        found = child < BLOCK
        tl.store(out_row + length, child, mask=found)
        length += found.to(tl.int32)
        cur = tl.where(found, child, cur)
        want = _value_at(target, cur, i)
    tl.store(ACCEPTED_LEN + r, length)
    tl.store(BONUS + r, want.to(tl.int64))


@triton.jit
def _sibling_tokens(is_child, token, i, BLOCK: tl.constexpr, KMAX: tl.constexpr):
    # the children's tokens packed into a [KMAX] vector (padding -1), children in index order
    k = tl.arange(0, KMAX)
    packed = tl.full([KMAX], -1, tl.int64)
    prev = -1
    for slot in tl.static_range(KMAX):
        nxt = tl.min(tl.where(is_child & (i > prev), i, BLOCK), axis=0)
        tok = _value_at(token.to(tl.int64), nxt, i)
        packed = tl.where((k == slot) & (nxt < BLOCK), tok, packed)
        prev = nxt
    return packed


@triton.jit
def _residual_token(ROW, vocab, siblings, threshold, BLOCK_V: tl.constexpr):
    # first v with threshold < running sum of p over non-sibling tokens; fallback: largest residual mass
    v_base = tl.arange(0, BLOCK_V)
    run = tl.full([], 0.0, tl.float32)
    pick = tl.full([], -1, tl.int32)
    v0 = tl.full([], 0, tl.int32)
    while (pick < 0) & (v0 < vocab):
        v = v0 + v_base
        v_ok = v < vocab
        p = tl.load(ROW + v, mask=v_ok, other=0.0)
        is_sib = tl.max((v.to(tl.int64)[:, None] == siblings[None, :]).to(tl.int32), axis=1) > 0
        res = tl.where(is_sib, 0.0, p)
        cum = run + tl.cumsum(res, axis=0)
        pick = tl.min(tl.where((cum > threshold) & v_ok, v, vocab), axis=0)
        pick = tl.where(pick < vocab, pick, -1)
        run += tl.sum(res, axis=0)
        v0 += BLOCK_V
    if pick < 0:
        best = tl.full([], -1.0, tl.float32)
        for start in range(0, vocab, BLOCK_V):
            v = start + v_base
            v_ok = v < vocab
            p = tl.load(ROW + v, mask=v_ok, other=0.0)
            is_sib = tl.max((v.to(tl.int64)[:, None] == siblings[None, :]).to(tl.int32), axis=1) > 0
            res = tl.where(is_sib | ~v_ok, -1.0, p)
            top = tl.max(res, axis=0)
            at = tl.min(tl.where(res == top, v, vocab), axis=0)
            pick = tl.where(top > best, at, pick)
            best = tl.maximum(best, top)
    return pick


@triton.jit
def _sample_walk_kernel(OFFSETS, PARENTS, TOKENS, PROBS, UNIFORMS, ACCEPTED, ACCEPTED_LEN, BONUS,
                        stride_pr, stride_ur, stride_acc, width, vocab,
                        BLOCK: tl.constexpr, KMAX: tl.constexpr, BLOCK_V: tl.constexpr):
    r = tl.program_id(0)
    start = tl.load(OFFSETS + r)
    n = tl.minimum(tl.load(OFFSETS + r + 1) - start, BLOCK)
    i = tl.arange(0, BLOCK)
    ok = i < n
    parent = tl.load(PARENTS + start + i, mask=ok, other=-2)
    token = tl.load(TOKENS + start + i, mask=ok, other=-1)
    tok_ok = (token >= 0) & (token < vocab)
    out_row = ACCEPTED + r.to(tl.int64) * stride_acc
    tl.store(out_row + i, tl.full([BLOCK], -1, tl.int32), mask=i < width)
    cur = tl.full([], 0, tl.int32)
    length = tl.full([], 0, tl.int32)
    go = n > 0
    while go:
        u = tl.load(UNIFORMS + r.to(tl.int64) * stride_ur + length)
        is_child = ok & (parent == cur) & (i > cur)
        row = PROBS + (start + cur).to(tl.int64) * stride_pr
        mass = tl.load(row + token, mask=is_child & tok_ok, other=0.0)
        hit = is_child & (u < tl.cumsum(mass, axis=0))
        child = tl.min(tl.where(hit, i, BLOCK), axis=0)
        go = child < BLOCK
        tl.store(out_row + length, child, mask=go)
        length += go.to(tl.int32)
        cur = tl.where(go, child, cur)
    # the walk stopped at `cur` with coin u: bonus from the residual without cur's children
    is_child = ok & (parent == cur) & (i > cur)
    row = PROBS + (start + cur).to(tl.int64) * stride_pr
    mass = tl.load(row + token, mask=is_child & tok_ok, other=0.0)
    u = tl.load(UNIFORMS + r.to(tl.int64) * stride_ur + length)
    siblings = _sibling_tokens(is_child, token, i, BLOCK, KMAX)
    bonus = _residual_token(row, vocab, siblings, u - tl.sum(mass, axis=0), BLOCK_V)
    tl.store(ACCEPTED_LEN + r, length)
    tl.store(BONUS + r, bonus.to(tl.int64))


def _output(trees: VerifyTrees, out: VerifyResult | None) -> VerifyResult:
    """Fresh result buffers (the kernels write every entry), or the caller's, checked."""
    device, bs = trees.offsets.device, trees.batch_size
    width = max(trees.max_nodes - 1, 1)
    if out is None:
        return VerifyResult(torch.empty((bs, width), dtype=torch.int32, device=device),
                            torch.empty((bs,), dtype=torch.int32, device=device),
                            torch.empty((bs,), dtype=torch.int64, device=device))
    check_device({"offsets": trees.offsets, "out.accepted": out.accepted, "out.accepted_len": out.accepted_len,
                  "out.bonus_token": out.bonus_token})
    check_tensor("out.accepted", out.accepted, ndim=2, dtypes=(torch.int32,), shape=(bs, width))
    check_tensor("out.accepted_len", out.accepted_len, ndim=1, dtypes=(torch.int32,), shape=(bs,))
    check_tensor("out.bonus_token", out.bonus_token, ndim=1, dtypes=(torch.int64,), shape=(bs,))
    if out.accepted.stride(1) != 1:
        raise KernelInputError("out.accepted must be contiguous in its last dim")
    return out


def greedy_verify(trees: VerifyTrees, target: torch.Tensor, *, out: VerifyResult | None = None) -> VerifyResult:
    """Greedy acceptance walk (module docstring). Shape: target int [N]. `out`: buffers to fill."""
    check_device({"offsets": trees.offsets, "target": target})
    check_tensor("target", target, ndim=1, dtypes=INDEX_DTYPES, shape=(trees.num_nodes,))
    result = _output(trees, out)
    _greedy_walk_kernel[(trees.batch_size,)](
        trees.offsets, trees.parents, trees.tokens, target,
        result.accepted, result.accepted_len, result.bonus_token,
        result.accepted.stride(0), result.accepted.shape[1], BLOCK=max(16, next_pow2(trees.max_nodes)),
    )
    return result


def sample_verify(trees: VerifyTrees, probs: torch.Tensor, uniforms: torch.Tensor, *,
                  out: VerifyResult | None = None, check_uniforms: bool = True) -> VerifyResult:
    """Lossless tree sampling walk (module docstring). Shape: probs f32 [N, V]; uniforms f32 [bs, >= max_nodes].

    Rows of probs must be distributions (not checked: that is a full read). check_uniforms checks
    the coins (one host sync). `out`: buffers to fill.
    """
    check_device({"offsets": trees.offsets, "probs": probs, "uniforms": uniforms})
    check_tensor("probs", probs, ndim=2, dtypes=(torch.float32,), shape=(trees.num_nodes, None))
    check_tensor("uniforms", uniforms, ndim=2, dtypes=(torch.float32,), shape=(trees.batch_size, None))
    if uniforms.shape[1] < trees.max_nodes:
        raise KernelInputError(f"uniforms needs {trees.max_nodes} coins per request (one per level), got {uniforms.shape[1]}")
    if probs.stride(1) != 1 or uniforms.stride(1) != 1:
        raise KernelInputError("probs and uniforms must be contiguous in their last dim")
    if check_uniforms and not bool(((uniforms >= 0) & (uniforms < 1)).all()):
        raise KernelInputError("uniforms must lie in [0, 1) (NaN included)")
    result = _output(trees, out)
    _sample_walk_kernel[(trees.batch_size,)](
        trees.offsets, trees.parents, trees.tokens, probs, uniforms,
        result.accepted, result.accepted_len, result.bonus_token,
        probs.stride(0), uniforms.stride(0), result.accepted.stride(0), result.accepted.shape[1], probs.shape[1],
        BLOCK=max(16, next_pow2(trees.max_nodes)), KMAX=max(2, next_pow2(trees.max_children)),
        BLOCK_V=VOCAB_TILE,
    )
    return result


def _children(parents: list[int], node: int) -> list[int]:
    return [c for c in range(node + 1, len(parents)) if parents[c] == node]


def _reference_result(trees: VerifyTrees, paths: list[list[int]], bonus: list[int]) -> VerifyResult:
    result = _output(trees, None)
    result.accepted.fill_(-1)
    for r, path in enumerate(paths):
        result.accepted[r, :len(path)] = torch.tensor(path, dtype=torch.int32)
    result.accepted_len.copy_(torch.tensor([len(p) for p in paths], dtype=torch.int32))
    result.bonus_token.copy_(torch.tensor(bonus, dtype=torch.int64))
    return result


def greedy_verify_reference(trees: VerifyTrees, target: torch.Tensor) -> VerifyResult:
    """Pure-torch/Python greedy walk with the semantics of `greedy_verify`."""
    offsets, parents = trees.offsets.tolist(), trees.parents.tolist()
    tokens, target = trees.tokens.tolist(), target.tolist()
    paths, bonus = [], []
    for r in range(trees.batch_size):
        lo, hi = offsets[r], offsets[r + 1]
        local_parents, path, cur = parents[lo:hi], [], 0
        while True:
            match = [c for c in _children(local_parents, cur) if tokens[lo + c] == target[lo + cur]]
            if not match:
                break
            cur = match[0]
            path.append(cur)
        paths.append(path)
        bonus.append(target[lo + cur])
    return _reference_result(trees, paths, bonus)


def _residual_reference(p: torch.Tensor, siblings: list[int], threshold: torch.Tensor) -> int:
    residual = p.clone()
    residual[siblings] = 0.0
    above = torch.nonzero(torch.cumsum(residual, 0) > threshold).flatten()
    if len(above):
        return int(above[0])
    residual[siblings] = -1.0
    return int(torch.argmax(residual))  # first index of the maximum


def sample_verify_reference(trees: VerifyTrees, probs: torch.Tensor, uniforms: torch.Tensor) -> VerifyResult:
    """Pure-torch sampling walk with the semantics of `sample_verify` (fp32 sums)."""
    offsets, parents, tokens = trees.offsets.tolist(), trees.parents.tolist(), trees.tokens.tolist()
    paths, bonus = [], []
    for r in range(trees.batch_size):
        lo, hi = offsets[r], offsets[r + 1]
        local_parents, path, cur = parents[lo:hi], [], 0
        while True:
            kids = _children(local_parents, cur)
            sibling_tokens = [tokens[lo + c] for c in kids]
            cumulative = torch.cumsum(probs[lo + cur, sibling_tokens], 0)
            u = uniforms[r, len(path)]
            hits = [c for c, total in zip(kids, cumulative) if u < total]
            if not hits:
                threshold = u - (cumulative[-1] if len(kids) else 0.0)
                bonus.append(_residual_reference(probs[lo + cur], sibling_tokens, threshold))
                break
            cur = hits[0]
            path.append(cur)
        paths.append(path)
    return _reference_result(trees, paths, bonus)
