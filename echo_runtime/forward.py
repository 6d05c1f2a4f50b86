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


@dataclass(frozen=True)
class _Layout:
    """Where the flat tokens live. Projections, norms and MLPs run on the T real tokens only;
    attention scatters queries into a padded [bs, n_max] grid (SDPA) or runs flat (kernel).

    Shape: valid bool [bs, n_max]; slot_of_token, storage int64 [T]; slots int64 [bs];
    mask bool [bs, 1, n_max, keys] (SDPA) or None; plan: kernels.tree_attention metadata or None.
    """

    valid: torch.Tensor
    slot_of_token: torch.Tensor
    storage: torch.Tensor
    slots: torch.Tensor
    keys: int
    mask: torch.Tensor | None
    plan: object | None


def _attention(layer, hidden, cos, sin, cache: KVCache, index: int, layout: _Layout):
    """One self-attention block over flat tokens: project, rotate, store K/V, attend. Shape: hidden [T, h]."""
    attn = layer.self_attn
    tokens, head_dim = hidden.shape[0], attn.head_dim
    q = attn.q_proj(hidden).view(tokens, -1, head_dim)
    k = attn.k_proj(hidden).view(tokens, -1, head_dim)
    v = attn.v_proj(hidden).view(tokens, -1, head_dim)
    if hasattr(attn, "q_norm"):  # Qwen3
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
    cache.store(index, layout.slot_of_token, layout.storage, k, v)
    if layout.plan is not None:
        from kernels.tree_attention import tree_attention

        out = tree_attention(q, k, v, cache.keys[index].permute(0, 2, 1, 3), cache.values[index].permute(0, 2, 1, 3),
                             layout.plan, scale=attn.scaling)
        return attn.o_proj(out.reshape(tokens, -1))
    bs, n_max = layout.valid.shape
    padded = q.new_zeros(bs, n_max, *q.shape[1:])
    padded[layout.valid] = q
    key_states, value_states = cache.window(index, layout.slots, layout.keys)
    out = F.scaled_dot_product_attention(padded.transpose(1, 2), key_states, value_states, attn_mask=layout.mask,
                                         scale=attn.scaling, enable_gqa=True)
    return attn.o_proj(out.transpose(1, 2)[layout.valid].reshape(tokens, -1))


def _layout(rows: list[TreeRow], cache: KVCache, use_kernel: bool, head_dim: int, group: int) -> _Layout:
    device = cache.keys[0].device
    slots_np = np.array([row.slot for row in rows], dtype=np.int64)
    prefix = cache.lengths[slots_np]
    widths = np.array([row.visible.shape[1] for row in rows], dtype=np.int64)
    cache.check_room(slots_np, widths)
    counts = np.array([len(row.tokens) for row in rows])
    n_max = int(counts.max())
    keys = int((prefix + widths).max())
    valid_np = np.arange(n_max)[None, :] < counts[:, None]
    to_device = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
    slots = to_device(slots_np)
    plan = mask = None
    if use_kernel and kernel_eligible(rows, head_dim, group):
        plan = _kernel_plan(rows, prefix, cache, slots)
    else:
        mask = to_device(_attention_mask(rows, prefix, n_max, keys))[:, None]
    storage = np.concatenate([prefix[r] + row.scratch_index for r, row in enumerate(rows)])
    return _Layout(valid=to_device(valid_np), slot_of_token=to_device(np.repeat(slots_np, counts)),
                   storage=to_device(storage), slots=slots, keys=keys, mask=mask, plan=plan)


@torch.inference_mode()
def tree_forward(model, cache: KVCache, rows: list[TreeRow], use_kernel: bool = False) -> torch.Tensor:
    """Run the decoder over the rows' tokens; K/V go to scratch. Returns the final hidden states
    of the tokens, row after row. Shape: [Σ n_r, hidden]."""
    decoder = model.model
    first = decoder.layers[0].self_attn
    layout = _layout(rows, cache, use_kernel, first.head_dim, first.num_key_value_groups)
    device = cache.keys[0].device
    tokens = torch.as_tensor(np.concatenate([row.tokens for row in rows]), device=device)
    positions = torch.as_tensor(np.concatenate([row.positions for row in rows]), device=device)
    hidden = decoder.embed_tokens(tokens)
    cos, sin = decoder.rotary_emb(hidden, positions[None, :])
    cos, sin = cos[0], sin[0]
    for index, layer in enumerate(decoder.layers):
        hidden = hidden + _attention(layer, layer.input_layernorm(hidden), cos, sin, cache, index, layout)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return decoder.norm(hidden)


@torch.inference_mode()
def next_token_logits(model, hidden: torch.Tensor) -> torch.Tensor:
    """LM-head logits. Shape: hidden [t, hidden] -> [t, vocab] (float32 or wider)."""
    logits = model.lm_head(hidden)
    return logits if logits.dtype == torch.float64 else logits.float()
