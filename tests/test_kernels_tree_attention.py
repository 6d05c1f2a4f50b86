"""tree_attention: Triton kernel vs torch reference, and the reference vs an independent dense SDPA.

Runs under TRITON_INTERPRET=1 on CPU (tests/conftest.py), or compiled on a GPU with
TRITON_INTERPRET=0. Every test draws fresh random ragged batches; the seed is in each failure
message (replay with KERNEL_TEST_SEED=<seed>).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

from kernels import KernelInputError  # noqa: E402
from kernels.tree_attention import plan_tree_attention, tree_attention, tree_attention_reference  # noqa: E402
from kernels.testing import fresh_seed, kernel_device, random_offsets, random_parents, random_tree_attention_case  # noqa: E402
from kernels.tree_masks import ancestor_masks, mask_bits  # noqa: E402

DEVICE = kernel_device()
pytestmark = pytest.mark.skipif(DEVICE is None, reason="compiled Triton kernels need CUDA (or TRITON_INTERPRET=1)")
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def _case(seed, **overrides):
    spec = dict(batch_size=3, tree_tokens=(1, 9), kv_lens=(0, 70), num_heads=6, num_kv_heads=2,
                head_dim=64, dtype=torch.float32, paged=False, page_size=16, device=DEVICE)
    spec.update(overrides)
    return random_tree_attention_case(torch.Generator().manual_seed(seed), **spec)


def _ancestors_by_walk(parents: list[int]) -> list[set[int]]:
    """Each local token's ancestor-or-self set, by walking parent links (independent of the bitmasks)."""
    sets = []
    for node in range(len(parents)):
        path, cur = set(), node
        while cur >= 0:
            path.add(cur)
            cur = parents[cur]
        sets.append(path)
    return sets


def _dense_sdpa(case) -> torch.Tensor:
    """The whole batch as one SDPA call over all keys with a dense boolean mask built from parents."""
    batch, offsets = case.batch, case.batch.tree_offsets.tolist()
    group = case.q.shape[1] // case.k_tree.shape[1]
    keys, values, owner, tree_local = [], [], [], []
    for r in range(batch.batch_size):
        length = int(batch.kv_lens[r])
        for pos in range(length):  # one position at a time from the raw cache layout
            if batch.paged:
                block = int(batch.block_table[r, pos // case.k_cache.shape[1]])
                where = (block, pos % case.k_cache.shape[1])
            else:
                where = (r, pos)
            keys.append(case.k_cache[where])
            values.append(case.v_cache[where])
            owner.append(r)
            tree_local.append(-1)
        for j in range(offsets[r], offsets[r + 1]):
            keys.append(case.k_tree[j])
            values.append(case.v_tree[j])
            owner.append(r)
            tree_local.append(j - offsets[r])
    allowed = torch.zeros(case.q.shape[0], len(keys), dtype=torch.bool)
    for r in range(batch.batch_size):
        lo, hi = offsets[r], offsets[r + 1]
        ancestors = _ancestors_by_walk(case.parents[lo:hi].tolist())
        for i in range(hi - lo):
            for k, (o, t) in enumerate(zip(owner, tree_local)):
                allowed[lo + i, k] = o == r and (t < 0 or t in ancestors[i])
    k = torch.stack(keys).double().repeat_interleave(group, dim=1).transpose(0, 1)   # [Hq, keys, D]
    v = torch.stack(values).double().repeat_interleave(group, dim=1).transpose(0, 1)
    q = case.q.double().transpose(0, 1)                                                 # [Hq, T, D]
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allowed.to(q.device))
    return out.transpose(0, 1)


@pytest.mark.parametrize("paged", [False, True])
def test_reference_matches_dense_sdpa_from_parents(paged):
    seed = fresh_seed()
    case = _case(seed, paged=paged, page_size=8, kv_lens=(0, 30))
    expected = _dense_sdpa(case)
    got = tree_attention_reference(*case.args())
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"seed {seed}: {m}")


def test_ancestor_masks_match_parent_walk():
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    offsets = random_offsets(gen, 5, (1, 64))
    parents = random_parents(gen, offsets)
    bits = mask_bits(ancestor_masks(offsets, parents), 64)
    for r in range(5):
        lo, hi = int(offsets[r]), int(offsets[r + 1])
        for i, ancestors in enumerate(_ancestors_by_walk(parents[lo:hi].tolist())):
            assert set(torch.nonzero(bits[lo + i]).flatten().tolist()) == ancestors, f"seed {seed} request {r}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("head_dim", [64, 128])
def test_kernel_matches_reference(dtype, paged, head_dim):
    seed = fresh_seed()
    gen = torch.Generator().manual_seed(seed)
    kv_heads, group = int(torch.randint(1, 3, (1,), generator=gen)), int(torch.randint(1, 9, (1,), generator=gen))
    case = _case(seed, dtype=dtype, paged=paged, head_dim=head_dim, num_kv_heads=kv_heads,
                 num_heads=kv_heads * group, page_size=int(torch.randint(3, 20, (1,), generator=gen)))
    splits = int(torch.randint(1, 4, (1,), generator=gen))
    out = torch.full_like(case.q, float("nan"))
    tree_attention(*case.args(), num_splits=splits, out=out)
    expected = tree_attention_reference(*case.args())
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(out.float(), expected.float(), atol=tol, rtol=tol,
                               msg=lambda m: f"seed {seed} group {group} splits {splits}: {m}")


def test_full_64_token_trees_and_custom_scale():
    """Requests of up to 64 tree tokens (mask bit 63 = the int64 sign bit), 3 heads per KV head:
    192 rows per request, so two row-chunk programs per (request, KV head)."""
    seed = fresh_seed()
    case = _case(seed, batch_size=2, tree_tokens=(60, 64), kv_lens=(1, 20), num_heads=6, num_kv_heads=2)
    out = torch.full_like(case.q, float("nan"))
    tree_attention(*case.args(), scale=0.3, num_splits=2, out=out)
    expected = tree_attention_reference(*case.args(), scale=0.3)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5, msg=lambda m: f"seed {seed}: {m}")


def test_default_split_choice_and_empty_prefixes():
    seed = fresh_seed()
    case = _case(seed, batch_size=4, kv_lens=(0, 0))
    out = tree_attention(*case.args())
    torch.testing.assert_close(out, tree_attention_reference(*case.args()), atol=1e-5, rtol=1e-5,
                               msg=lambda m: f"seed {seed}: {m}")


def test_bad_inputs_raise_clear_errors():
    case = _case(fresh_seed(), batch_size=2)
    q, kt, vt, kc, vc, batch = case.args()
    with pytest.raises(KernelInputError, match="k_tree must have dtype"):
        tree_attention(q, kt.half(), vt, kc, vc, batch)
    with pytest.raises(KernelInputError, match="query heads over"):
        tree_attention(q[:, :5].contiguous(), kt, vt, kc, vc, batch)
    with pytest.raises(KernelInputError, match="head_dim 32 unsupported"):
        tree_attention(q[..., :32].contiguous(), kt[..., :32].contiguous(), vt[..., :32].contiguous(),
                       kc[..., :32].contiguous(), vc[..., :32].contiguous(), batch)
    with pytest.raises(KernelInputError, match="q must have 3 dims"):
        tree_attention(q[0], kt, vt, kc, vc, batch)
    masks = batch.tree_mask.clone()
    masks[0] = 0
    with pytest.raises(KernelInputError, match="does not set its own bit"):
        plan_tree_attention(batch.tree_offsets, masks, batch.kv_lens, kc)
    with pytest.raises(KernelInputError, match="outside"):
        plan_tree_attention(batch.tree_offsets, batch.tree_mask, batch.kv_lens + kc.shape[1] + 1, kc)
    with pytest.raises(KernelInputError, match="65 items, at most 64"):
        plan_tree_attention(torch.tensor([0, 65], device=DEVICE), torch.ones(65, dtype=torch.int64, device=DEVICE),
                            batch.kv_lens[:1], kc)


def test_bad_block_table_is_rejected():
    case = _case(fresh_seed(), batch_size=2, paged=True, kv_lens=(20, 30), page_size=8)
    batch = case.batch
    table = batch.block_table.clone()
    table[1, 0] = case.k_cache.shape[0]
    with pytest.raises(KernelInputError, match=r"block_table\[1, 0\]"):
        plan_tree_attention(batch.tree_offsets, batch.tree_mask, batch.kv_lens, case.k_cache, table)


def test_splits_follow_each_requests_own_context():
    """A lone long request splits into MIN_KEYS_PER_SPLIT-key pieces; a full batch of equal short
    requests does not split; in a big ragged batch only the outlier splits (no cap on programs)."""
    from kernels.tree_attention import MIN_KEYS_PER_SPLIT, choose_splits

    assert choose_splits(np.array([16384]), 8, 132).tolist() == [16384 // MIN_KEYS_PER_SPLIT]
    assert set(choose_splits(np.full(256, 1024), 8, 132).tolist()) == {1}
    ragged = choose_splits(np.array([1024] * 255 + [65536]), 8, 132)
    assert set(ragged[:255].tolist()) == {1} and ragged[255] > 8
    assert choose_splits(np.array([0, 100]), 8, 132).tolist() == [1, 1]   # never zero splits


def test_mixed_split_and_unsplit_requests():
    """Per-request splits (1, 3, 2, 5) in one launch: unsplit requests write directly, split ones
    through partials and the merge; every output row written (NaN poison) and equal to the reference."""
    from dataclasses import replace

    from kernels.tree_attention import plan_splits

    seed = fresh_seed()
    case = _case(seed, batch_size=4, kv_lens=(0, 90), paged=True, page_size=16)
    batch = case.batch
    splits = plan_splits(batch.kv_lens_host, batch.tree_offsets.cpu().numpy(), np.array([1, 3, 2, 5]), DEVICE)
    assert splits.num_partial_rows == sum(s * n for s, n in zip([1, 3, 2, 5], batch.tree_offsets.diff().tolist())
                                          if s > 1)
    mixed = replace(batch, splits=splits)
    out = torch.full_like(case.q, float("nan"))
    tree_attention(case.q, case.k_tree, case.v_tree, case.k_cache, case.v_cache, mixed, out=out)
    torch.testing.assert_close(out, tree_attention_reference(*case.args()), atol=1e-5, rtol=1e-5,
                               msg=lambda m: f"seed {seed}: {m}")


def test_runtime_head_major_cache_layout():
    """The runtime's [slots, kv_heads, capacity, head_dim] cache, passed as a permuted view with one
    page per slot (echo_runtime.forward): same result as the reference."""
    seed = fresh_seed()
    case = _case(seed, batch_size=3, kv_lens=(5, 60))
    slots = torch.tensor([2, 0, 1], dtype=torch.int32, device=DEVICE)   # request r lives in slot slots[r]
    head_major_k = case.k_cache[[1, 2, 0]].permute(0, 2, 1, 3).contiguous()   # [slots, Hkv, capacity, D]
    head_major_v = case.v_cache[[1, 2, 0]].permute(0, 2, 1, 3).contiguous()
    k_view, v_view = head_major_k.permute(0, 2, 1, 3), head_major_v.permute(0, 2, 1, 3)
    assert k_view.stride(1) == k_view.shape[-1]                          # positions adjacent within a head
    batch = plan_tree_attention(case.batch.tree_offsets, case.batch.tree_mask, case.batch.kv_lens, k_view,
                                block_table=slots[:, None])
    out = torch.full_like(case.q, float("nan"))
    tree_attention(case.q, case.k_tree, case.v_tree, k_view, v_view, batch, num_splits=2, out=out)
    torch.testing.assert_close(out, tree_attention_reference(*case.args()), atol=1e-5, rtol=1e-5,
                               msg=lambda m: f"seed {seed}: {m}")
