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

Kernel design: one program per (row chunk, work item, KV head); a work item is one prefix split
of one request. Its rows are the request's tree tokens × the G query heads of the KV head, so each
K/V tile is loaded once and serves every tree token and query head of the group (COST_MODEL.md's
attention bytes). A program holds at most 128 rows; bigger trees × groups (e.g. 64 tokens × 4
heads) take adjacent row-chunk programs that read the same tiles at the same time, so the second
read is mostly an L2 hit (and such shapes are compute-bound anyway). The prefix pass needs no
mask; the tree pass (one tile, in the request's last split) applies the ancestor bits; both feed
one online softmax. Splits are chosen per request from its own context (`choose_splits`): one
chunk length for the whole step, sized so the step has about PROGRAMS_PER_SM programs per SM, so a
lone long request splits as much as it needs and, in a big ragged batch, only requests far longer
than the rest split. Unsplit requests write their output directly; only split requests write fp32
partials (Σ splits × tokens rows, not splits × every token) that a second kernel merges by
log-sum-exp over their tokens alone. Work items run longest first. Dots run in fp32 under the
interpreter (its bf16 tl.dot is wrong) and with input_precision="ieee" for fp32 inputs on the GPU
(TF32 would miss the 1e-5 tolerance).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace

import numpy as np
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
MIN_ROWS_PER_PROGRAM = 16 if INTERPRET else 64   # (_rows_per_program)
MIN_KEYS_PER_SPLIT = 512      # split the prefix only into pieces at least this long
MAX_SPLITS = 64
PROGRAMS_PER_SM = 4           # splits aim at this many attention programs per SM


@dataclass(frozen=True)
class SplitPlan:
    """Which programs attend to which part of which request's prefix, and where split results go.

    Shape:
        work_request, work_split  int32 [W]   request and split index of each work item (longest first)
        request_splits            int32 [bs]  prefix splits of each request (1 = unsplit)
        partial_base              int32 [bs]  first partial row of a split request (unused when unsplit)
        merge_tokens              int32 [Ts]  tree tokens (global rows) of split requests
        merge_request             int32 [Ts]  their requests
    num_partial_rows (Σ splits × tree tokens over split requests) and max_splits are host ints.
    """

    work_request: torch.Tensor
    work_split: torch.Tensor
    request_splits: torch.Tensor
    partial_base: torch.Tensor
    merge_tokens: torch.Tensor
    merge_request: torch.Tensor
    num_partial_rows: int
    max_splits: int

    @property
    def num_work(self) -> int:
        return self.work_request.numel()


def choose_splits(kv_lens: np.ndarray, num_kv_heads: int, num_sms: int) -> np.ndarray:
    """Prefix splits per request, from each request's own context length.

    One chunk length L for the step: the step's keys × KV heads spread over PROGRAMS_PER_SM
    programs per SM, but never under MIN_KEYS_PER_SPLIT keys (shorter pieces cost more in partials
    than they gain); request r gets ceil(kv_r / L) splits (1 … MAX_SPLITS)."""
    lens = np.asarray(kv_lens, dtype=np.int64)
    work = int(lens.sum()) * num_kv_heads
    chunk = max(MIN_KEYS_PER_SPLIT, -(-work // (PROGRAMS_PER_SM * num_sms)))
    return np.clip(-(-lens // chunk), 1, MAX_SPLITS)


def plan_splits(kv_lens: np.ndarray, tree_offsets: np.ndarray, splits: np.ndarray, device) -> SplitPlan:
    """The work items and partial rows of per-request split counts `splits` (host arrays)."""
    splits = np.asarray(splits, dtype=np.int64)
    counts = np.diff(np.asarray(tree_offsets, dtype=np.int64))
    requests = np.repeat(np.arange(len(splits)), splits)
    split_index = np.arange(len(requests)) - np.repeat(np.cumsum(splits) - splits, splits)
    chunk_keys = -(-np.asarray(kv_lens, dtype=np.int64)[requests] // splits[requests])
    order = np.argsort(-chunk_keys, kind="stable")              # longest work first: a shorter tail
    is_split = splits > 1
    rows = np.where(is_split, splits * counts, 0)
    base = np.cumsum(rows) - rows
    merge_request = np.repeat(np.flatnonzero(is_split), counts[is_split])
    merge_tokens = np.concatenate([np.arange(tree_offsets[r], tree_offsets[r + 1]) for r in np.flatnonzero(is_split)]
                                  or [np.zeros(0, dtype=np.int64)])
    as_t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.int32), device=device)  # noqa: E731
    return SplitPlan(as_t(requests[order]), as_t(split_index[order]), as_t(splits), as_t(base),
                     as_t(merge_tokens), as_t(merge_request), int(rows.sum()), int(splits.max(initial=1)))


@dataclass(frozen=True)
class TreeAttentionBatch:
    """One step's tree-attention metadata, validated once by `plan_tree_attention`, shared by layers.

    Shape:
        tree_offsets  int32 [bs + 1]  CSR rows of each request's tree tokens
        tree_mask     int64 [T]       ancestor bits (bit j: may attend local tree token j)
        kv_lens       int32 [bs]      prefix length per request
        block_table   int32 [bs, max_blocks] or None (contiguous cache)
        splits        SplitPlan: the prefix splits of every request
    max_tree_tokens and max_kv_len are host ints (no device sync at launch).
    """

    tree_offsets: torch.Tensor
    tree_mask: torch.Tensor
    kv_lens: torch.Tensor
    block_table: torch.Tensor | None
    max_tree_tokens: int
    max_kv_len: int
    splits: SplitPlan
    kv_lens_host: np.ndarray      # int64 [bs] (to re-plan splits without a device sync)

    @property
    def batch_size(self) -> int:
        return self.kv_lens.numel()

    @property
    def num_tree_tokens(self) -> int:
        return self.tree_mask.numel()

    @property
    def paged(self) -> bool:
        return self.block_table is not None


def plan_tree_attention(tree_offsets, tree_mask, kv_lens, k_cache, block_table=None, *,
                        num_splits: int | None = None) -> TreeAttentionBatch:
    """Validate one step's metadata against the cache layout (one host sync) and pack it.

    num_splits: the same prefix splits for every request (tests, benchmarks); default: per
    request from its own context (`choose_splits`) for this device's SM count."""
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
    lens_np = lens.numpy()
    return TreeAttentionBatch(
        tree_offsets=tree_offsets.to(torch.int32),
        tree_mask=tree_mask,
        kv_lens=kv_lens.to(torch.int32),
        block_table=None if block_table is None else block_table.to(torch.int32),
        max_tree_tokens=max_tree,
        max_kv_len=int(lens.max()),
        splits=_split_plan(lens_np, tree_offsets, k_cache.device, num_splits, num_kv_heads=k_cache.shape[2]),
        kv_lens_host=lens_np,
    )


@functools.lru_cache(maxsize=None)
def _num_sms(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4


def _split_plan(lens: np.ndarray, tree_offsets, device, num_splits: int | None,
                num_kv_heads: int | None = None) -> SplitPlan:
    """num_splits None: choose_splits for this device (needs num_kv_heads); else that many for all."""
    if num_splits is None:
        splits = choose_splits(lens, num_kv_heads, _num_sms(torch.device(device)))
    elif isinstance(num_splits, int) and not isinstance(num_splits, bool) and num_splits >= 1:
        splits = np.full(len(lens), num_splits, dtype=np.int64)
    else:
        raise KernelInputError(f"num_splits must be a positive int, got {num_splits!r}")
    return plan_splits(lens, tree_offsets.detach().cpu().numpy(), splits, device)


def with_splits(batch: TreeAttentionBatch, num_splits: int | None) -> TreeAttentionBatch:
    """The same step with `num_splits` prefix splits for every request (None: unchanged). Costs a
    host round trip for the new work table: tests and benchmarks, not a serving loop."""
    if num_splits is None:
        return batch
    return replace(batch, splits=_split_plan(batch.kv_lens_host, batch.tree_offsets, batch.tree_offsets.device,
                                             num_splits))


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
            for bn, w in CANDIDATE_TILES for s in (2, 3)]


# (key tile, warps) candidates. 128-row programs: narrow tiles, 8 warps; smaller programs: 64 keys on
# 4 warps or 128 keys on 8. Left out: 128 keys on 4 warps with 64 rows, whose accumulators spill
# (found by compile_check's ptxas register report).
CANDIDATE_TILES = ((32, 8), (64, 8), (64, 4), (128, 8))
BIG_ROW_TILES = ((32, 8), (64, 8))


def _prune_configs(configs, named_args, **kwargs):
    """Time only the tiles for this program size (each config costs a compile on first use; this
    keeps autotuning to 4 compiles per key)."""
    big_rows = {**named_args, **kwargs}.get("BLOCK_M", 64) >= 128
    keep = [c for c in configs
            if ((c.kwargs["BLOCK_N"], c.num_warps) in BIG_ROW_TILES) == big_rows]
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


@triton.autotune(configs=_configs(), key=["HEAD_DIM", "BLOCK_M", "GROUP", "HAS_SPLITS", "batch_bucket", "context_bucket"],
                 prune_configs_by={"early_config_prune": _prune_configs})
@triton.jit(do_not_specialize=["page_size", "batch_bucket", "context_bucket"])
def _tree_attention_kernel(
    Q, K_TREE, V_TREE, K_CACHE, V_CACHE, OUT, PART, LSE,
    TREE_OFFSETS, TREE_MASK, KV_LENS, BLOCK_TABLE,
    WORK_REQUEST, WORK_SPLIT, REQUEST_SPLITS, PARTIAL_BASE,
    stride_qt, stride_qh,              # q [T, Hq, D]
    stride_kt, stride_kh,              # k_tree / v_tree [T, Hkv, D]
    stride_cb, stride_cs, stride_ch,   # caches [rows or blocks, positions or page slots, Hkv, D]
    stride_bt,                         # block_table row stride
    stride_ot, stride_oh,              # out [T, Hq, D]
    stride_pt, stride_ph, stride_lt,   # partials [P, Hq, D] fp32; lse [P, Hq]
    num_kv_heads, scale_log2,
    page_size,                         # positions per block (a run-time int: any capacity, no recompile)
    batch_bucket, context_bucket,      # autotune keys only (pow2 of batch and longest context)
    GROUP: tl.constexpr,        # query heads per KV head
    HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr,      # rows (tree token × group head) per program, >= 16
    BLOCK_T: tl.constexpr,      # tree keys tile, >= max tree tokens, >= 16
    PAGED: tl.constexpr,        # False: contiguous cache (page_size unused)
    HAS_SPLITS: tl.constexpr,   # some request is split: its programs write fp32 partials + lse
    UPCAST: tl.constexpr,       # interpreter: fp32 dots (bf16 tl.dot is wrong there)
    DOT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,      # prefix keys per tile (autotuned)
):
    pid_m, pid_w, h = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    r = tl.load(WORK_REQUEST + pid_w)
    split = tl.load(WORK_SPLIT + pid_w)
    num_splits = tl.load(REQUEST_SPLITS + r)
    q_start = tl.load(TREE_OFFSETS + r)
    n_req = tl.load(TREE_OFFSETS + r + 1) - q_start
    n_tok = tl.minimum(n_req, BLOCK_T)  # never read past the tile
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
    tile_lo = split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, n_tiles)
    all_rows = rows >= 0
    for tile in range(tile_lo, tile_hi):
        keys = tile * BLOCK_N + tl.arange(0, BLOCK_N)
        key_ok = keys < kv_len
        if PAGED:
            block = tl.load(BLOCK_TABLE + r.to(tl.int64) * stride_bt + keys // page_size, mask=key_ok, other=0)
            base = block.to(tl.int64) * stride_cb + (keys % page_size).to(tl.int64) * stride_cs
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

    # Tree pass (the request's last split only): its tree tokens under the ancestor bits.
    if split == num_splits - 1:
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
    out_ok = tok < tl.where(num_splits == 1, n_tok, 0)     # (the interpreter wants plain comparisons as masks)
    o_rows = (q_start + tok).to(tl.int64) * stride_ot + head * stride_oh
    tl.store(OUT + o_rows[:, None] + d[None, :], out.to(OUT.dtype.element_ty), mask=out_ok[:, None])
    if HAS_SPLITS:
        # partial row of (split, token): PARTIAL_BASE[r] + split · n_req + token
        p_row = (tl.load(PARTIAL_BASE + r) + split * n_req + tok).to(tl.int64)
        lse = tl.where(l_i > 0, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), float("-inf"))
        part_ok = tok < tl.where(num_splits > 1, n_tok, 0)
        tl.store(LSE + p_row * stride_lt + head, lse, mask=part_ok)
        tl.store(PART + (p_row * stride_pt + head * stride_ph)[:, None] + d[None, :], out, mask=part_ok[:, None])


@triton.jit
def _merge_splits_kernel(
    PART, LSE, OUT, MERGE_TOKENS, MERGE_REQUEST, TREE_OFFSETS, REQUEST_SPLITS, PARTIAL_BASE,
    stride_pt, stride_ph, stride_lt,   # partials [P, Hq, D] fp32; lse [P, Hq] (log2 domain)
    stride_ot, stride_oh,              # out [T, Hq, D]
    num_heads,
    BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr,
):
    pid = tl.program_id(0)
    i = pid // num_heads
    hq = pid % num_heads
    t = tl.load(MERGE_TOKENS + i)
    r = tl.load(MERGE_REQUEST + i)
    start = tl.load(TREE_OFFSETS + r)
    n_req = tl.load(TREE_OFFSETS + r + 1) - start
    num_splits = tl.load(REQUEST_SPLITS + r)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < num_splits
    p_row = (tl.load(PARTIAL_BASE + r) + s * n_req + (t - start)).to(tl.int64)
    d = tl.arange(0, HEAD_DIM)
    lse = tl.load(LSE + p_row * stride_lt + hq, mask=s_ok, other=float("-inf"))
    top = tl.max(lse, axis=0)
    weight = tl.where(s_ok & (lse > float("-inf")), tl.exp2(lse - top), 0.0)
    part = tl.load(PART + (p_row * stride_pt + hq * stride_ph)[:, None] + d[None, :], mask=s_ok[:, None], other=0.0)
    out = tl.sum(part * weight[:, None], axis=0) / tl.sum(weight, axis=0)
    tl.store(OUT + t.to(tl.int64) * stride_ot + hq * stride_oh + d, out.to(OUT.dtype.element_ty))


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


def _rows_per_program(rows: int) -> int:
    """64 or 128 rows on a GPU. Two sizes only (each is a compile per autotune config): padding a
    smaller tree to 64 rows costs tensor-core work the memory-bound small trees have to spare. The
    interpreter, which pays for every padded row in numpy, keeps 16-row steps below 64."""
    if rows > MIN_ROWS_PER_PROGRAM:
        return MAX_ROWS_PER_PROGRAM if rows > 64 else 64
    return MIN_ROWS_PER_PROGRAM


def _tree_tile(max_tree_tokens: int) -> int:
    return 16 if max_tree_tokens <= 16 else MAX_TREE_TOKENS     # two sizes, as _rows_per_program


def launch_grid(batch: TreeAttentionBatch, num_heads: int, num_kv_heads: int) -> tuple[int, int, int]:
    """(row chunks, work items = Σ prefix splits, KV heads): the attention kernel's grid for this step."""
    rows = batch.max_tree_tokens * (num_heads // num_kv_heads)
    return triton.cdiv(rows, _rows_per_program(rows)), batch.splits.num_work, num_kv_heads


def tree_attention(q, k_tree, v_tree, k_cache, v_cache, batch: TreeAttentionBatch, *,
                   scale: float | None = None, num_splits: int | None = None, out=None) -> torch.Tensor:
    """Attention of every tree token over its prefix and ancestors (module docstring). Shape: out [T, Hq, D].

    num_splits: the same prefix splits for every request, overriding the batch's plan (a host
    round trip per call, `with_splits`: pass it to plan_tree_attention instead where that matters).
    Launches only device work (no host sync), so a CUDA graph can capture it once autotuned.
    """
    num_heads, num_kv, head_dim = _check_operands(q, k_tree, v_tree, k_cache, v_cache, batch)
    if batch.paged and batch.block_table.device != q.device:
        raise KernelInputError(f"block_table on {batch.block_table.device}, q on {q.device}")
    batch = with_splits(batch, num_splits)
    plan = batch.splits
    group = num_heads // num_kv
    grid = launch_grid(batch, num_heads, num_kv)
    block_m = _rows_per_program(batch.max_tree_tokens * group)
    if out is None:
        out = torch.empty_like(q)
    check_tensor("out", out, ndim=3, dtypes=(q.dtype,), shape=tuple(q.shape))
    check_device({"q": q, "out": out})
    if out.stride(-1) != 1:
        raise KernelInputError("out must be contiguous in head_dim (stride(-1) == 1)")
    has_splits = plan.num_partial_rows > 0
    rows = max(plan.num_partial_rows, 1)
    part = torch.empty((rows, num_heads, head_dim) if has_splits else (1, 1, head_dim), dtype=torch.float32,
                       device=q.device)
    lse = torch.empty((rows, num_heads) if has_splits else (1, 1), dtype=torch.float32, device=q.device)
    scale = head_dim ** -0.5 if scale is None else float(scale)
    block_table = batch.block_table if batch.paged else batch.kv_lens  # unused pointer when contiguous
    page_size = k_cache.shape[1] if batch.paged else 1
    _tree_attention_kernel[grid](
        q, k_tree, v_tree, k_cache, v_cache, out, part, lse,
        batch.tree_offsets, batch.tree_mask, batch.kv_lens, block_table,
        plan.work_request, plan.work_split, plan.request_splits, plan.partial_base,
        q.stride(0), q.stride(1), k_tree.stride(0), k_tree.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        block_table.stride(0), out.stride(0), out.stride(1),
        part.stride(0), part.stride(1), lse.stride(0),
        num_kv, scale * math.log2(math.e), page_size,
        next_pow2(batch.batch_size), next_pow2(batch.max_kv_len),
        GROUP=group, HEAD_DIM=head_dim, BLOCK_M=block_m,
        BLOCK_T=_tree_tile(batch.max_tree_tokens), PAGED=batch.paged, HAS_SPLITS=has_splits,
        UPCAST=INTERPRET, DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    if has_splits:
        _merge_splits_kernel[(plan.merge_tokens.numel() * num_heads,)](
            part, lse, out, plan.merge_tokens, plan.merge_request, batch.tree_offsets, plan.request_splits,
            plan.partial_base, part.stride(0), part.stride(1), lse.stride(0), out.stride(0), out.stride(1), num_heads,
            BLOCK_S=next_pow2(plan.max_splits), HEAD_DIM=head_dim,
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
