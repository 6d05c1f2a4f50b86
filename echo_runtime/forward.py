"""One decoder forward over a ragged batch of token trees on a KVCache.

Every forward of the runtime goes through `tree_forward`: a prefill chunk is a chain, a drafter
level is a set of frontier nodes, a verification is the selected tree. Each request row brings
its new tokens with their positions (prefix length + depth − 1 for tree nodes), the scratch slot
where their K/V goes, and a tree mask over the scratch (ancestors and itself). Attention of a
token = the row's committed prefix (all of it) + the scratch entries its mask allows.

The decoder's own modules (embedding, norms, projections, MLP, rotary, LM head) come from the
transformers model; only attention is ours, which is what lets one forward serve ragged trees:
torch SDPA with a boolean mask (the reference, any row), or, with `use_kernel` (the engine sets it
on CUDA), kernels.tree_attention when every row is a self-contained tree of at most 64 tokens (a
verification; drafter levels and long prefill chunks stay on SDPA). Llama, Qwen2 and Qwen3 (q/k
norms) layouts are supported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from echo_runtime.kv_cache import KVCache


@dataclass(frozen=True)
class TreeRow:
    """New tokens of one request for one forward.

    Shape: tokens, positions, scratch_index int64 [n]; visible bool [n, w] (token i attends to
    scratch entry j; w >= 1 + max(scratch_index); a token must see itself).
    """

    slot: int
    tokens: np.ndarray
    positions: np.ndarray
    scratch_index: np.ndarray
    visible: np.ndarray


def chain_row(slot: int, tokens: np.ndarray, first_position: int) -> TreeRow:
    """A causal chain (prefill chunk or draft extend) written at the start of the scratch."""
    n = len(tokens)
    return TreeRow(
        slot=slot,
        tokens=np.asarray(tokens, dtype=np.int64),
        positions=first_position + np.arange(n, dtype=np.int64),
        scratch_index=np.arange(n, dtype=np.int64),
        visible=np.tril(np.ones((n, n), dtype=bool)),
    )


def _attention_mask(rows: list[TreeRow], prefix: np.ndarray, n_max: int, keys: int) -> np.ndarray:
    """bool [bs, n_max, keys]: the prefix, then each token's visible scratch entries."""
    mask = np.zeros((len(rows), n_max, keys), dtype=bool)
    for r, row in enumerate(rows):
        n, w = row.visible.shape
        mask[r, :n, : prefix[r]] = True
        mask[r, :n, prefix[r] : prefix[r] + w] = row.visible
        mask[r, n:, :] = True  # padding queries: any finite row, output discarded
    return mask


def _pad(rows: list[TreeRow], field: str, n_max: int) -> np.ndarray:
    out = np.zeros((len(rows), n_max), dtype=np.int64)
    for r, row in enumerate(rows):
        values = getattr(row, field)
        out[r, : len(values)] = values
    return out


def kernel_eligible(rows: list[TreeRow], head_dim: int, group: int) -> bool:
    """True when kernels.tree_attention computes exactly what the SDPA path does for these rows."""
    from kernels.tree_attention import HEAD_DIMS, MAX_GROUP, MAX_TREE_TOKENS

    if head_dim not in HEAD_DIMS or group > MAX_GROUP:
        return False
    return all(len(row.tokens) <= MAX_TREE_TOKENS and row.visible.shape == (len(row.tokens),) * 2
               and np.array_equal(row.scratch_index, np.arange(len(row.tokens))) for row in rows)


def _kernel_plan(rows: list[TreeRow], prefix: np.ndarray, cache: KVCache, slots: torch.Tensor):
    """kernels.tree_attention's metadata: ancestor bits per token, prefix lengths, slot table."""
    from kernels.tree_attention import plan_tree_attention

    device = slots.device
    bits = np.concatenate([(row.visible.astype(np.uint64) << np.arange(row.visible.shape[1], dtype=np.uint64))
                           .sum(axis=1, dtype=np.uint64) for row in rows]).view(np.int64)
    offsets = np.concatenate(([0], np.cumsum([len(row.tokens) for row in rows])))
    as_tensor = lambda a, dtype: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    return plan_tree_attention(as_tensor(offsets, torch.int32), as_tensor(bits, torch.int64),
                               as_tensor(prefix, torch.int32), cache.keys[0].permute(0, 2, 1, 3),
                               block_table=slots[:, None].to(torch.int32))


def _attention(layer, hidden, cos, sin, cache: KVCache, index: int, write, slots, keys: int, mask, plan=None):
    """One self-attention block: project, rotate, store new K/V, attend over prefix + scratch."""
    attn = layer.self_attn
    bs, n, _ = hidden.shape
    head_dim = attn.head_dim
    q = attn.q_proj(hidden).view(bs, n, -1, head_dim)
    k = attn.k_proj(hidden).view(bs, n, -1, head_dim)
    v = attn.v_proj(hidden).view(bs, n, -1, head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
    valid, slot_of_token, storage = write
    cache.store(index, slot_of_token, storage, k.transpose(1, 2)[valid], v[valid])
    if plan is not None:
        from kernels.tree_attention import tree_attention

        flat = tree_attention(q.transpose(1, 2)[valid], k.transpose(1, 2)[valid], v[valid],
                              cache.keys[index].permute(0, 2, 1, 3), cache.values[index].permute(0, 2, 1, 3),
                              plan, scale=attn.scaling)
        out = flat.new_zeros(bs, n, *flat.shape[1:])
        out[valid] = flat
        return attn.o_proj(out.reshape(bs, n, -1))
    key_states, value_states = cache.window(index, slots, keys)
    out = F.scaled_dot_product_attention(
        q, key_states, value_states, attn_mask=mask, scale=attn.scaling, enable_gqa=True
    )
    return attn.o_proj(out.transpose(1, 2).reshape(bs, n, -1))


@torch.inference_mode()
def tree_forward(model, cache: KVCache, rows: list[TreeRow], use_kernel: bool = False) -> torch.Tensor:
    """Run the decoder over the rows' tokens; K/V go to scratch. Returns the final hidden states
    of the real tokens, row after row. Shape: [Σ n_r, hidden]."""
    device = cache.keys[0].device
    slots_np = np.array([row.slot for row in rows], dtype=np.int64)
    prefix = cache.lengths[slots_np]
    widths = np.array([row.visible.shape[1] for row in rows], dtype=np.int64)
    cache.check_room(slots_np, widths)
    n_max = max(len(row.tokens) for row in rows)
    keys = int((prefix + widths).max())
    counts = np.array([len(row.tokens) for row in rows])
    valid_np = np.arange(n_max)[None, :] < counts[:, None]
    storage_np = prefix[:, None] + _pad(rows, "scratch_index", n_max)
    to_device = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    valid = to_device(valid_np)
    slots = to_device(slots_np)
    write = (valid, slots[:, None].expand(-1, n_max)[valid], to_device(storage_np)[valid])
    first = model.model.layers[0].self_attn
    plan = None
    if use_kernel and kernel_eligible(rows, first.head_dim, first.num_key_value_groups):
        plan, mask = _kernel_plan(rows, prefix, cache, slots), None
    else:
        mask = to_device(_attention_mask(rows, prefix, n_max, keys))[:, None]
    decoder = model.model
    hidden = decoder.embed_tokens(to_device(_pad(rows, "tokens", n_max)))
    cos, sin = decoder.rotary_emb(hidden, to_device(_pad(rows, "positions", n_max)))
    for index, layer in enumerate(decoder.layers):
        residual = hidden
        attended = _attention(layer, layer.input_layernorm(hidden), cos, sin, cache, index,
                              write, slots, keys, mask, plan)
        hidden = residual + attended
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return decoder.norm(hidden)[valid]


@torch.inference_mode()
def next_token_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits. Shape: hidden [t, hidden] -> [t, vocab] (float32 or wider)."""
    logits = model.lm_head(hidden)
    return logits if logits.dtype == torch.float64 else logits.float()
