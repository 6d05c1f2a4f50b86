"""echo's super-tree selection on the GPU: gate with subtrees, then one global top-B over the batch.

Same result as `echo_sim.trees.supertree_select` (POLICIES.md steps 1 and 4) for the same inputs:

    eligible[i] = gate_value >= threshold at i and at every ancestor of i
    selected    = the `budget` best eligible nodes of the whole batch, ordered by
                  rank_value desc, score desc, depth asc, request asc, node asc

Layout (n = lattice nodes of the batch, bs = requests): request r owns nodes offsets[r] :
offsets[r + 1] (possibly none); parents are local indices, −1 = child of the root, earlier in the
request (level order); depth is 1 for children of the root.

Two launches. `_gate_depth_kernel` (one program per request) computes eligibility and depth by
pointer jumping through a scratch buffer. `_top_b_kernel` (one program) finds the B-th best key
by a most-significant-digit radix select over the 96-bit key (rank, score, depth·n + index), one
8-bit digit per pass with a histogram, stopping as soon as the remaining ties fit the budget,
then marks key >= that boundary and counts per request.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels._launch import (
    INDEX_DTYPES, INTERPRET, KernelInputError, check_device, check_local_parents, check_offsets, check_tensor,
    next_pow2,
)

MAX_NODES_PER_REQUEST = 4096
TOP_B_BLOCK = 64 if INTERPRET else 4096


@dataclass(frozen=True)
class SelectTrees:
    """Validated lattice structure of one step. Shape: offsets int32 [bs + 1]; parents int32 [n]."""

    offsets: torch.Tensor
    parents: torch.Tensor
    max_nodes: int

    @property
    def batch_size(self) -> int:
        return self.offsets.numel() - 1

    @property
    def num_nodes(self) -> int:
        return self.parents.numel()


@dataclass(frozen=True)
class SelectResult:
    """Shape: selected bool [n]; counts int32 [bs] (selected nodes per request)."""

    selected: torch.Tensor
    counts: torch.Tensor


def plan_select(offsets, parents) -> SelectTrees:
    """Validate lattice offsets and level-ordered local parents (one host sync)."""
    check_device({"offsets": offsets, "parents": parents})
    check_tensor("parents", parents, ndim=1, dtypes=INDEX_DTYPES)
    host = offsets.detach().cpu().to(torch.int64)
    check_tensor("offsets", offsets, ndim=1, dtypes=INDEX_DTYPES)
    if offsets.numel() < 2 or int(host[0]) != 0 or int(host[-1]) != parents.numel() or bool((host.diff() < 0).any()):
        raise KernelInputError(f"offsets must be non-decreasing from 0 to {parents.numel()} with >= 2 entries")
    max_nodes = int(host.diff().max())
    if max_nodes > MAX_NODES_PER_REQUEST:
        raise KernelInputError(f"a request has {max_nodes} lattice nodes, at most {MAX_NODES_PER_REQUEST} supported")
    if parents.numel() * max(max_nodes, 1) >= 2**32:
        raise KernelInputError(f"{parents.numel()} nodes × depth {max_nodes} overflow the 32-bit tie-break key")
    check_local_parents("parents", parents, offsets, root_first=False)
    return SelectTrees(offsets.to(torch.int32), parents.to(torch.int32), max_nodes)


@triton.jit
def _gate_depth_kernel(OFFSETS, PARENTS, GATE, SCRATCH, COUNTS, threshold, stride_scratch,
                       BLOCK: tl.constexpr, ROUNDS: tl.constexpr):
    # SCRATCH int32 [4, n]: rows ancestor, gate-ok, depth (pointer-jumping state), then request id.
    r = tl.program_id(0)
    start = tl.load(OFFSETS + r)
    count = tl.minimum(tl.load(OFFSETS + r + 1) - start, BLOCK)
    i = tl.arange(0, BLOCK)
    ok = i < count
    anc = tl.load(PARENTS + start + i, mask=ok, other=-1)
    good = (tl.load(GATE + start + i, mask=ok, other=0.0) >= threshold).to(tl.int32)
    depth = tl.full([BLOCK], 1, tl.int32)
    ANC, GOOD, DEPTH, REQUEST = SCRATCH, SCRATCH + stride_scratch, SCRATCH + 2 * stride_scratch, SCRATCH + 3 * stride_scratch
    # Invariant: good/depth aggregate the path from the node up to (excluding) anc; each round doubles it.
    for _ in tl.static_range(ROUNDS):
        tl.store(ANC + start + i, anc, mask=ok)
        tl.store(GOOD + start + i, good, mask=ok)
        tl.store(DEPTH + start + i, depth, mask=ok)
        tl.debug_barrier()
        has = ok & (anc >= 0) & (anc < i)
        up_good = tl.load(GOOD + start + anc, mask=has, other=1, cache_modifier=".cg")
        up_depth = tl.load(DEPTH + start + anc, mask=has, other=0, cache_modifier=".cg")
        up_anc = tl.load(ANC + start + anc, mask=has, other=-1, cache_modifier=".cg")
        tl.debug_barrier()
        good = good & up_good
        depth = depth + up_depth
        anc = tl.where(has, up_anc, -1)
    tl.store(GOOD + start + i, good, mask=ok)
    tl.store(DEPTH + start + i, depth, mask=ok)
    tl.store(REQUEST + start + i, tl.full([BLOCK], 0, tl.int32) + r, mask=ok)
    tl.store(COUNTS + r, 0)


@triton.jit
def _orderable(x):
    # float32 -> uint32 with the same order (−0.0 folded into +0.0, as numpy compares them equal)
    bits = tl.where(x == 0.0, 0.0, x).to(tl.uint32, bitcast=True)
    return tl.where((bits >> 31) != 0, bits ^ 0xFFFFFFFF, bits | 0x80000000)


@triton.jit
def _node_keys(RANK, SCORE, SCRATCH, stride_scratch, offs, ok, n):
    # (eligible, w0, w1, w2): the 96-bit key, bigger = better; w2 = ~(depth·n + index) breaks ties
    eligible = tl.load(SCRATCH + stride_scratch + offs, mask=ok, other=0) != 0
    depth = tl.load(SCRATCH + 2 * stride_scratch + offs, mask=ok, other=0)
    w0 = _orderable(tl.load(RANK + offs, mask=ok, other=0.0))
    w1 = _orderable(tl.load(SCORE + offs, mask=ok, other=0.0))
    w2 = (tl.full([], 4294967295, tl.int64) - (depth.to(tl.int64) * n + offs)).to(tl.uint32)
    return eligible & ok, w0, w1, w2


@triton.jit
def _matches_prefix(w0, w1, w2, p0, p1, p2, WORD: tl.constexpr, SHIFT: tl.constexpr):
    # key's bits above the current digit equal the resolved prefix's
    same = w0 == w0
    if WORD > 0:
        same = same & (w0 == p0)
    if WORD > 1:
        same = same & (w1 == p1)
    if SHIFT < 24:
        w = w0 if WORD == 0 else (w1 if WORD == 1 else w2)
        p = p0 if WORD == 0 else (p1 if WORD == 1 else p2)
        same = same & ((w >> (SHIFT + 8)) == (p >> (SHIFT + 8)))
    return same


@triton.jit
def _top_b_kernel(RANK, SCORE, SCRATCH, SELECTED, COUNTS, stride_scratch, n, budget, BLOCK: tl.constexpr):
    base = tl.arange(0, BLOCK)
    bins = tl.arange(0, 512)           # 256 digits + a parking bin range for nodes out of the race
    p0 = tl.full([], 0, tl.uint32)
    p1 = tl.full([], 0, tl.uint32)
    p2 = tl.full([], 0, tl.uint32)
    need = tl.full([], 0, tl.int32) + budget      # how many of the still-tied nodes to take
    done = need <= 0
    for digit_pass in tl.static_range(12):
        word = digit_pass // 4                      # compile-time: which 32-bit word, which byte
        shift = 24 - 8 * (digit_pass % 4)
        if not done:
            hist = tl.zeros([512], tl.int32)
            for start in range(0, n, BLOCK):
                offs = start + base
                eligible, w0, w1, w2 = _node_keys(RANK, SCORE, SCRATCH, stride_scratch, offs, offs < n, n)
                alive = eligible & _matches_prefix(w0, w1, w2, p0, p1, p2, word, shift)
                w = w0 if word == 0 else (w1 if word == 1 else w2)
                digit = tl.where(alive, ((w >> shift) & 255).to(tl.int32), 256)
                hist += tl.histogram(digit, 512)
            hist = tl.where(bins < 256, hist, 0)
            at_or_above = tl.sum(hist, axis=0) - tl.cumsum(hist, axis=0) + hist
            if digit_pass == 0:
                done = tl.sum(hist, axis=0) <= need      # budget covers every eligible node: prefix 0
            if not done:
                chosen = tl.max(tl.where((bins < 256) & (at_or_above >= need), bins, -1), axis=0)
                tied = tl.sum(tl.where(bins == chosen, hist, 0), axis=0)
                need -= tl.sum(tl.where(bins == chosen, at_or_above, 0), axis=0) - tied
                digit = chosen.to(tl.uint32) << shift
                if word == 0:
                    p0 = p0 | digit
                elif word == 1:
                    p1 = p1 | digit
                else:
                    p2 = p2 | digit
                done = tied == need
    for start in range(0, n, BLOCK):
        offs = start + base
        ok = offs < n
        eligible, w0, w1, w2 = _node_keys(RANK, SCORE, SCRATCH, stride_scratch, offs, ok, n)
        at_least = (w0 > p0) | ((w0 == p0) & ((w1 > p1) | ((w1 == p1) & (w2 >= p2))))
        chosen = eligible & at_least & ((base * 0 + budget) > 0)
        tl.store(SELECTED + offs, chosen.to(tl.uint8), mask=ok)
        request = tl.load(SCRATCH + 3 * stride_scratch + offs, mask=ok, other=0)
        tl.atomic_add(COUNTS + request, 1, mask=chosen & ok)


def _check_values(name: str, values, n: int, device) -> torch.Tensor:
    check_tensor(name, values, ndim=1, dtypes=(torch.float32,), shape=(n,))
    if values.device != device:
        raise KernelInputError(f"{name} on {values.device}, lattice on {device}")
    return values


def supertree_select(trees: SelectTrees, rank_value, threshold: float, budget: int, *,
                     gate_value=None, score=None, check_finite: bool = True,
                     out: SelectResult | None = None) -> SelectResult:
    """Gated global top-B (module docstring). Shape: rank_value, gate_value, score float32 [n].

    gate_value and score default to rank_value. check_finite rejects NaN inputs (a host sync);
    the order of NaN keys is undefined, so pass False only for inputs known to be finite.
    `out`: buffers to fill (selected bool [n], counts int32 [bs]).
    """
    device = check_device({"offsets": trees.offsets, "rank_value": rank_value})
    n = trees.num_nodes
    rank_value = _check_values("rank_value", rank_value, n, device)
    gate_value = rank_value if gate_value is None else _check_values("gate_value", gate_value, n, device)
    score = rank_value if score is None else _check_values("score", score, n, device)
    if not isinstance(budget, int) or not math.isfinite(float(threshold)):
        raise KernelInputError(f"budget must be an int and threshold finite, got {budget!r}, {threshold!r}")
    if check_finite:
        for name, values in (("rank_value", rank_value), ("gate_value", gate_value), ("score", score)):
            if bool(torch.isnan(values).any()):
                raise KernelInputError(f"{name} holds NaN at node {int(torch.nonzero(torch.isnan(values))[0])}")
    scratch = torch.empty((4, n), dtype=torch.int32, device=device)
    if out is None:
        out = SelectResult(torch.empty(n, dtype=torch.bool, device=device),
                           torch.empty(trees.batch_size, dtype=torch.int32, device=device))
    check_tensor("out.selected", out.selected, ndim=1, dtypes=(torch.bool,), shape=(n,))
    check_tensor("out.counts", out.counts, ndim=1, dtypes=(torch.int32,), shape=(trees.batch_size,))
    check_device({"offsets": trees.offsets, "out.selected": out.selected, "out.counts": out.counts})
    counts, selected = out.counts, out.selected.view(torch.uint8)
    block = max(16, next_pow2(trees.max_nodes))
    _gate_depth_kernel[(trees.batch_size,)](
        trees.offsets, trees.parents, gate_value, scratch, counts, float(threshold), scratch.stride(0),
        BLOCK=block, ROUNDS=max(1, (block - 1).bit_length()), num_warps=4,
    )
    _top_b_kernel[(1,)](rank_value, score, scratch, selected, counts, scratch.stride(0), n,
                        max(min(budget, n + 1), -1), BLOCK=TOP_B_BLOCK, num_warps=4 if INTERPRET else 16)
    return out


def supertree_select_reference(trees: SelectTrees, rank_value, threshold: float, budget: int, *,
                               gate_value=None, score=None) -> SelectResult:
    """The simulator's selection, `echo_sim.trees.supertree_select` (the one implementation of the
    rule), on these tensors: computes on the CPU, returns on the lattice's device."""
    import numpy as np

    from echo_sim.trees import LatticeBatch, supertree_select as numpy_select

    rank = rank_value.detach().cpu().numpy()
    gate = rank if gate_value is None else gate_value.detach().cpu().numpy()
    score = rank if score is None else score.detach().cpu().numpy()
    offsets = trees.offsets.cpu().numpy().astype(np.int64)
    parent = trees.parents.cpu().numpy().astype(np.int32)
    request = np.repeat(np.arange(trees.batch_size), np.diff(offsets))
    depth = np.ones(trees.num_nodes, dtype=np.int32)
    for node in np.flatnonzero(parent >= 0):  # parents come first (level order)
        depth[node] = depth[parent[node] + offsets[request[node]]] + 1
    blank = np.zeros(trees.num_nodes, dtype=np.int32)
    batch = LatticeBatch(offsets, blank, parent, depth, blank.astype(np.float32), score, blank.astype(bool),
                         np.zeros(trees.batch_size, dtype=np.int32))
    selected = numpy_select(batch, rank, gate, float(threshold), max(int(budget), 0))
    counts = np.bincount(request[selected], minlength=trees.batch_size).astype(np.int32)
    device = trees.offsets.device
    return SelectResult(torch.from_numpy(selected).to(device), torch.from_numpy(counts).to(device))
