"""Ragged tree attention: each request's draft-tree tokens attend to its KV prefix and their ancestors.

Layout (T = total tree tokens of the batch, bs = requests, G = query heads per KV head):

    request r's tree tokens are rows tree_offsets[r] : tree_offsets[r + 1] of q, k_tree, v_tree,
    in level order with the root (the last committed token) first; 1 <= n_r <= 64.
    q               [T, Hq, D]            queries of the tree tokens
    k_tree, v_tree  [T, Hkv, D]           the tree tokens' OWN keys/values (not in the cache)
    k_cache,v_cache contiguous: [rows >= bs, capacity, Hkv, D]  request r reads row r
                    paged:      [num_blocks, page_size, Hkv, D] request r reads block_table[r]
                    (any strides with stride(-1) == 1, so a head-major cache can pass a permuted
                    view; a slot-indexed contiguous cache is the paged case with page_size = capacity)
    out             [T, Hq, D]

Token i of request r attends to prefix positions 0 … kv_lens[r]−1 (no mask) and to tree token j
of r when bit j of tree_mask[i] is set (its ancestors and itself; `ancestor_masks` builds them).
Query head h uses KV head h // G. Scores are scale · q·k (default scale = D^-1/2), softmax in fp32.

Kernel design: one program per (request, KV head, prefix split, row chunk). Its rows are the
request's tree tokens × the G query heads of the KV head, so each K/V tile is loaded once and
serves every tree token and query head of the group (COST_MODEL.md's attention bytes). A program
holds at most 128 rows; bigger trees × groups (e.g. 64 tokens × 4 heads) take adjacent row-chunk
programs that read the same tiles at the same time, so the second read is mostly an L2 hit (and
such shapes are compute-bound anyway). The prefix pass needs no mask; the tree pass (one tile, in
the last split) applies the ancestor bits; both feed one online softmax. When the programs cannot
fill the GPU the prefix is split across programs and the partial results merged by log-sum-exp in
a second kernel. Dots run in fp32 under the interpreter (its bf16 tl.dot is wrong) and with
input_precision="ieee" for fp32 inputs on the GPU (TF32 would miss the 1e-5 tolerance).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels._launch import (
    FLOAT_DTYPES, INDEX_DTYPES, INTERPRET, KernelInputError, check_device, check_offsets, check_tensor,
    next_pow2,
)
from kernels.tree_masks import check_tree_mask

MAX_TREE_TOKENS = 64          # one 64-bit ancestor mask per tree token
MAX_GROUP = 8                 # query heads per KV head
HEAD_DIMS = (64, 128)
MAX_ROWS_PER_PROGRAM = 128    # tree tokens × group heads handled by one program
MIN_KEYS_PER_SPLIT = 512      # split the prefix only into pieces at least this long
MAX_SPLITS = 32


@dataclass(frozen=True)
class TreeAttentionBatch:
    """One step's tree-attention metadata, validated once by `plan_tree_attention`, shared by layers.

    Shape:
        tree_offsets  int32 [bs + 1]  CSR rows of each request's tree tokens
        tree_mask     int64 [T]       ancestor bits (bit j: may attend local tree token j)
        kv_lens       int32 [bs]      prefix length per request
        block_table   int32 [bs, max_blocks] or None (contiguous cache)
    max_tree_tokens and max_kv_len are host ints (no device sync at launch).
    """

    tree_offsets: torch.Tensor
    tree_mask: torch.Tensor
    kv_lens: torch.Tensor
    block_table: torch.Tensor | None
    max_tree_tokens: int
    max_kv_len: int

    @property
    def batch_size(self) -> int:
        return self.kv_lens.numel()

    @property
    def num_tree_tokens(self) -> int:
        return self.tree_mask.numel()

    @property
    def paged(self) -> bool:
        return self.block_table is not None


def plan_tree_attention(tree_offsets, tree_mask, kv_lens, k_cache, block_table=None) -> TreeAttentionBatch:
    """Validate one step's metadata against the cache layout (one host sync) and pack it."""
    check_device({"tree_offsets": tree_offsets, "tree_mask": tree_mask, "kv_lens": kv_lens,
                  "k_cache": k_cache, "block_table": block_table})
    check_tensor("tree_mask", tree_mask, ndim=1, dtypes=(torch.int64,))
    max_tree = check_offsets("tree_offsets", tree_offsets, tree_mask.numel(), MAX_TREE_TOKENS)
    check_tree_mask(tree_mask, tree_offsets)
    bs = tree_offsets.numel() - 1
    check_tensor("kv_lens", kv_lens, ndim=1, dtypes=INDEX_DTYPES, shape=(bs,))
    check_tensor("k_cache", k_cache, ndim=4, dtypes=FLOAT_DTYPES)
    lens = kv_lens.detach().cpu().to(torch.int64)
    if block_table is None:
        if k_cache.shape[0] < bs:
            raise KernelInputError(f"contiguous k_cache has {k_cache.shape[0]} rows for {bs} requests")
        capacity = k_cache.shape[1]
    else:
        check_tensor("block_table", block_table, ndim=2, dtypes=INDEX_DTYPES, shape=(bs, None))
        capacity = block_table.shape[1] * k_cache.shape[1]
        _check_block_table(block_table, lens, k_cache.shape[1], k_cache.shape[0])
    if bool((lens < 0).any()) or bool((lens > capacity).any()):
        row = int(torch.nonzero((lens < 0) | (lens > capacity))[0])
        raise KernelInputError(f"kv_lens[{row}] = {int(lens[row])} outside [0, {capacity}] (cache capacity)")
    return TreeAttentionBatch(
        tree_offsets=tree_offsets.to(torch.int32),
        tree_mask=tree_mask,
        kv_lens=kv_lens.to(torch.int32),
        block_table=None if block_table is None else block_table.to(torch.int32),
        max_tree_tokens=max_tree,
        max_kv_len=int(lens.max()),
    )


def _check_block_table(block_table, lens, page_size, num_blocks) -> None:
    host = block_table.detach().cpu().to(torch.int64)
    used = torch.arange(host.shape[1])[None, :] * page_size < lens[:, None]
    bad = used & ((host < 0) | (host >= num_blocks))
    if bool(bad.any()):
        row, col = (int(x) for x in torch.nonzero(bad)[0])
        raise KernelInputError(f"block_table[{row}, {col}] = {int(host[row, col])} is not a block in [0, {num_blocks})")


def _configs():
    if INTERPRET:
        return [triton.Config({"BLOCK_N": 16}, num_warps=4, num_stages=1)]
    return [triton.Config({"BLOCK_N": bn}, num_warps=w, num_stages=s)
            for bn in (32, 64, 128) for w in (4, 8) for s in (2, 3)]


def _prune_configs(configs, named_args, **kwargs):
    """Time only plausible tiles: 128-row programs with narrow key tiles and 8 warps, else wide tiles.

    (Each config costs a compile on first use; this keeps autotuning to 4 compiles per key.)
    """
    big_rows = {**named_args, **kwargs}.get("BLOCK_M", 64) >= 128
    widths, warps = ((32, 64), 8) if big_rows else ((64, 128), 4)
    keep = [c for c in configs if c.kwargs["BLOCK_N"] in widths and c.num_warps == warps]
    return keep or configs[:1]


@triton.jit
def _online_softmax_step(q, k, v, allowed, m_i, l_i, acc, scale_log2,
                         UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr):
    # q [BM, D], k/v [BN, D], allowed [BM, BN]; m_i/l_i [BM] running max/sum (log2 domain), acc [BM, D]
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * scale_log2
    s = tl.where(allowed, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing allowed yet stay 0
    p = tl.exp2(s - m_safe[:, None])
    alpha = tl.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if not UPCAST:
        p = p.to(v.dtype)
    acc = acc * alpha[:, None] + tl.dot(p, v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.autotune(configs=_configs(), key=["HEAD_DIM", "BLOCK_M", "GROUP", "SPLIT"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit
def _tree_attention_kernel(
    Q, K_TREE, V_TREE, K_CACHE, V_CACHE, OUT, LSE,
    TREE_OFFSETS, TREE_MASK, KV_LENS, BLOCK_TABLE,
    stride_qt, stride_qh,              # q [T, Hq, D]
    stride_kt, stride_kh,              # k_tree / v_tree [T, Hkv, D]
    stride_cb, stride_cs, stride_ch,   # caches [rows or blocks, positions or page slots, Hkv, D]
    stride_bt,                         # block_table row stride
    stride_os, stride_ot, stride_oh,   # out [(splits,) T, Hq, D]
    stride_ls, stride_lt,              # lse [splits, T, Hq]
    num_kv_heads, num_splits, scale_log2,
    GROUP: tl.constexpr,        # query heads per KV head
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,      # rows (tree token × group head) per program, >= 16
    BLOCK_T: tl.constexpr,      # tree keys tile, >= max tree tokens, >= 16
    PAGE_SIZE: tl.constexpr,    # 0: contiguous cache
    SPLIT: tl.constexpr,        # write fp32 partials + lse for the merge kernel
    UPCAST: tl.constexpr,       # interpreter: fp32 dots (bf16 tl.dot is wrong there)
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,      # prefix keys per tile (autotuned)
):
    pid_m, pid_s, pid_rh = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    r = pid_rh // num_kv_heads
    h = pid_rh % num_kv_heads
    q_start = tl.load(TREE_OFFSETS + r)
    n_tok = tl.minimum(tl.load(TREE_OFFSETS + r + 1) - q_start, BLOCK_T)  # never read past the tile
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    tok = rows // GROUP
    head = h * GROUP + rows % GROUP
    row_ok = tok < n_tok
    d = tl.arange(0, HEAD_DIM)
    q_rows = (q_start + tok).to(tl.int64) * stride_qt + head * stride_qh
    q = tl.load(Q + q_rows[:, None] + d[None, :], mask=row_ok[:, None], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)

    # Prefix pass: this split's tiles of the request's KV prefix, no mask beyond the length.
    kv_len = tl.load(KV_LENS + r)
    n_tiles = tl.cdiv(kv_len, BLOCK_N)
    tiles_per_split = tl.cdiv(n_tiles, num_splits)
    tile_lo = pid_s * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, n_tiles)
    all_rows = rows >= 0
    for tile in range(tile_lo, tile_hi):
        keys = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        key_ok = keys < kv_len
        if PAGE_SIZE > 0:
            block = tl.load(BLOCK_TABLE + r.to(tl.int64) * stride_bt + keys // PAGE_SIZE, mask=key_ok, other=0)
            base = block.to(tl.int64) * stride_cb + (keys % PAGE_SIZE).to(tl.int64) * stride_cs
        else:
            base = r.to(tl.int64) * stride_cb + keys.to(tl.int64) * stride_cs
        kv_ptrs = base[:, None] + h * stride_ch + d[None, :]
        k = tl.load(K_CACHE + kv_ptrs, mask=key_ok[:, None], other=0.0)
        v = tl.load(V_CACHE + kv_ptrs, mask=key_ok[:, None], other=0.0)
        if UPCAST:
            k, v = k.to(tl.float32), v.to(tl.float32)
        allowed = all_rows[:, None] & key_ok[None, :]
        m_i, l_i, acc = _online_softmax_step(q, k, v, allowed, m_i, l_i, acc, scale_log2,
                                             UPCAST, DOT_PRECISION)

    # Tree pass (last split only): the request's tree tokens under the ancestor bits.
    if pid_s == num_splits - 1:
        j = tl.arange(0, BLOCK_T)
        j_ok = j < n_tok
        t_ptrs = (q_start + j).to(tl.int64)[:, None] * stride_kt + h * stride_kh + d[None, :]
        kt = tl.load(K_TREE + t_ptrs, mask=j_ok[:, None], other=0.0)
        vt = tl.load(V_TREE + t_ptrs, mask=j_ok[:, None], other=0.0)
        if UPCAST:
            kt, vt = kt.to(tl.float32), vt.to(tl.float32)
        bits = tl.load(TREE_MASK + q_start + tok, mask=row_ok, other=0)
        allowed = (((bits[:, None] >> j[None, :].to(tl.int64)) & 1) != 0) & j_ok[None, :]
        m_i, l_i, acc = _online_softmax_step(q, kt, vt, allowed, m_i, l_i, acc, scale_log2,
                                             UPCAST, DOT_PRECISION)

    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    o_rows = pid_s.to(tl.int64) * stride_os + (q_start + tok).to(tl.int64) * stride_ot + head * stride_oh
    if SPLIT:
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        tl.store(LSE + pid_s.to(tl.int64) * stride_ls + (q_start + tok).to(tl.int64) * stride_lt + head,
                 lse, mask=row_ok)
        tl.store(OUT + o_rows[:, None] + d[None, :], out, mask=row_ok[:, None])
    else:
        tl.store(OUT + o_rows[:, None] + d[None, :], out.to(OUT.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _merge_splits_kernel(
    PART, LSE, OUT, num_splits,
    stride_ps, stride_pt, stride_ph,   # partials [splits, T, Hq, D] fp32
    stride_ls, stride_lt,              # lse [splits, T, Hq] (log2 domain)
    stride_ot, stride_oh,              # out [T, Hq, D]
    num_heads,
    BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    pid = tl.program_id(0)
    t = (pid // num_heads).to(tl.int64)
    hq = pid % num_heads
    s = tl.arange(0, BLOCK_S)
    s_ok = s < num_splits
    d = tl.arange(0, HEAD_DIM)
    lse = tl.load(LSE + s * stride_ls + t * stride_lt + hq, mask=s_ok, other=float("-inf"))
    top = tl.max(lse, axis=0)
    weight = tl.where(s_ok & (lse > float("-inf")), tl.exp2(lse - top), 0.0)
    part = tl.load(PART + s[:, None] * stride_ps + t * stride_pt + hq * stride_ph + d[None, :],
                   mask=s_ok[:, None], other=0.0)
    out = tl.sum(part * weight[:, None], axis=0) / tl.sum(weight, axis=0)
    tl.store(OUT + t * stride_ot + hq * stride_oh + d, out.to(OUT.dtype.element_ty))


def _check_operands(q, k_tree, v_tree, k_cache, v_cache, batch: TreeAttentionBatch) -> tuple[int, int, int]:
    """Shapes/dtypes/strides of one call's tensors; returns (query heads, KV heads, head_dim)."""
    check_device({"q": q, "k_tree": k_tree, "v_tree": v_tree, "k_cache": k_cache, "v_cache": v_cache,
                  "tree_offsets": batch.tree_offsets})
    total = batch.num_tree_tokens
    check_tensor("q", q, ndim=3, dtypes=FLOAT_DTYPES, shape=(total, None, None))
    num_heads, head_dim = q.shape[1], q.shape[2]
    check_tensor("k_tree", k_tree, ndim=3, dtypes=(q.dtype,), shape=(total, None, head_dim))
    num_kv = k_tree.shape[1]
    check_tensor("v_tree", v_tree, ndim=3, dtypes=(q.dtype,), shape=tuple(k_tree.shape))
    check_tensor("k_cache", k_cache, ndim=4, dtypes=(q.dtype,), shape=(None, None, num_kv, head_dim))
    check_tensor("v_cache", v_cache, ndim=4, dtypes=(q.dtype,), shape=tuple(k_cache.shape))
    if head_dim not in HEAD_DIMS:
        raise KernelInputError(f"head_dim {head_dim} unsupported, use one of {HEAD_DIMS}")
    if num_heads % num_kv or not 1 <= num_heads // num_kv <= MAX_GROUP:
        raise KernelInputError(f"{num_heads} query heads over {num_kv} KV heads: need 1…{MAX_GROUP} per KV head")
    if k_tree.stride() != v_tree.stride() or k_cache.stride() != v_cache.stride():
        raise KernelInputError("k_tree/v_tree and k_cache/v_cache must share strides")
    for name, tensor in (("q", q), ("k_tree", k_tree), ("k_cache", k_cache)):
        if tensor.stride(-1) != 1:
            raise KernelInputError(f"{name} must be contiguous in head_dim (stride(-1) == 1)")
    return num_heads, num_kv, head_dim


def choose_num_splits(programs: int, max_kv_len: int, num_sms: int) -> int:
    """Prefix splits so that about 4 programs per SM run, each split >= MIN_KEYS_PER_SPLIT keys."""
    if programs >= 4 * num_sms:
        return 1
    want = triton.cdiv(4 * num_sms, programs)
    return max(1, min(want, max_kv_len // MIN_KEYS_PER_SPLIT, MAX_SPLITS))


def _rows_per_program(rows: int) -> int:
    return max(16, min(next_pow2(rows), MAX_ROWS_PER_PROGRAM))   # tl.dot needs >= 16


def launch_grid(batch: TreeAttentionBatch, num_heads: int, num_kv_heads: int, device,
                num_splits: int | None = None) -> tuple[int, int, int]:
    """(row chunks, prefix splits, requests × KV heads): the attention kernel's grid for this step."""
    rows = batch.max_tree_tokens * (num_heads // num_kv_heads)
    row_chunks = triton.cdiv(rows, _rows_per_program(rows))
    programs = row_chunks * batch.batch_size * num_kv_heads
    if num_splits is None:
        device = torch.device(device)
        num_sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
        num_splits = choose_num_splits(programs, batch.max_kv_len, num_sms)
    if not isinstance(num_splits, int) or num_splits < 1:
        raise KernelInputError(f"num_splits must be a positive int, got {num_splits!r}")
    return row_chunks, num_splits, batch.batch_size * num_kv_heads


def tree_attention(q, k_tree, v_tree, k_cache, v_cache, batch: TreeAttentionBatch, *,
                   scale: float | None = None, num_splits: int | None = None, out=None) -> torch.Tensor:
    """Attention of every tree token over its prefix and ancestors (module docstring). Shape: out [T, Hq, D].

    num_splits: prefix splits per request (default: `choose_num_splits` for this GPU).
    """
    num_heads, num_kv, head_dim = _check_operands(q, k_tree, v_tree, k_cache, v_cache, batch)
    if batch.paged and batch.block_table.device != q.device:
        raise KernelInputError(f"block_table on {batch.block_table.device}, q on {q.device}")
    group = num_heads // num_kv
    grid = launch_grid(batch, num_heads, num_kv, q.device, num_splits)
    num_splits = grid[1]
    block_m = _rows_per_program(batch.max_tree_tokens * group)
    if out is None:
        out = torch.empty_like(q)
    check_tensor("out", out, ndim=3, dtypes=(q.dtype,), shape=tuple(q.shape))
    check_device({"q": q, "out": out})
    if out.stride(-1) != 1:
        raise KernelInputError("out must be contiguous in head_dim (stride(-1) == 1)")
    split = num_splits > 1
    if split:
        target = torch.empty((num_splits, *q.shape), dtype=torch.float32, device=q.device)
        lse = torch.empty((num_splits, q.shape[0], num_heads), dtype=torch.float32, device=q.device)
    else:
        target, lse = out.unsqueeze(0), out.new_empty((1, 1, 1), dtype=torch.float32)
    scale = head_dim ** -0.5 if scale is None else float(scale)
    block_table = batch.block_table if batch.paged else batch.kv_lens  # unused pointer when contiguous
    page_size = k_cache.shape[1] if batch.paged else 0
    _tree_attention_kernel[grid](
        q, k_tree, v_tree, k_cache, v_cache, target, lse,
        batch.tree_offsets, batch.tree_mask, batch.kv_lens, block_table,
        q.stride(0), q.stride(1), k_tree.stride(0), k_tree.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_table.stride(0), target.stride(0), target.stride(1), target.stride(2),
        lse.stride(0), lse.stride(1),
        num_kv, num_splits, scale * math.log2(math.e),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_M=block_m,
        BLOCK_T=max(16, next_pow2(batch.max_tree_tokens)), PAGE_SIZE=page_size, SPLIT=split,
        UPCAST=INTERPRET, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    if split:
        _merge_splits_kernel[(q.shape[0] * num_heads,)](
            target, lse, out, num_splits,
            target.stride(0), target.stride(1), target.stride(2), lse.stride(0), lse.stride(1),
            out.stride(0), out.stride(1), num_heads,
            BLOCK_S=next_pow2(num_splits), HEAD_DIM=head_dim,
        )
    return out


def gather_prefix(cache: torch.Tensor, batch: TreeAttentionBatch, request: int) -> torch.Tensor:
    """[kv_len, Hkv, D]: request's prefix rows of a contiguous or paged cache (reference helper)."""
    length = int(batch.kv_lens[request])
    if not batch.paged:
        return cache[request, :length]
    page_size = cache.shape[1]
    positions = torch.arange(length, device=cache.device)
    blocks = batch.block_table[request, positions // page_size].long()
    return cache[blocks, positions % page_size]


def tree_attention_reference(q, k_tree, v_tree, k_cache, v_cache, batch: TreeAttentionBatch, *,
                             scale: float | None = None) -> torch.Tensor:
    """Pure-torch tree_attention with identical semantics (fp32 math, one request at a time).

    Shape: q [T, Hq, D], k_tree/v_tree [T, Hkv, D], caches as in the module docstring; returns
    [T, Hq, D] in q's dtype.
    """
    from kernels.tree_masks import mask_bits

    group = q.shape[1] // k_tree.shape[1]
    scale = q.shape[2] ** -0.5 if scale is None else float(scale)
    out = torch.empty_like(q)
    offsets = batch.tree_offsets.tolist()
    for r in range(batch.batch_size):
        lo, hi = offsets[r], offsets[r + 1]
        keys = torch.cat([gather_prefix(k_cache, batch, r), k_tree[lo:hi]]).float()
        values = torch.cat([gather_prefix(v_cache, batch, r), v_tree[lo:hi]]).float()
        prefix_len = keys.shape[0] - (hi - lo)
        allowed = torch.cat([torch.ones(hi - lo, prefix_len, dtype=torch.bool, device=q.device),
                             mask_bits(batch.tree_mask[lo:hi], hi - lo)], dim=1)
        keys = keys.repeat_interleave(group, dim=1)       # [keys, Hq, D]
        values = values.repeat_interleave(group, dim=1)
        scores = torch.einsum("thd,khd->htk", q[lo:hi].float(), keys) * scale
        probs = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1)
        out[lo:hi] = torch.einsum("htk,khd->thd", probs, values).to(q.dtype)
    return out
