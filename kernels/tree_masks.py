"""64-bit ancestor masks of ragged verification trees (the tree_attention mask format).

A batch of trees is CSR: request r owns rows offsets[r] : offsets[r + 1], local index 0 is the
root, every other row's `parents` entry is a local index earlier in the same request (level order).
Bit j of mask[i] is set when local row j is row i itself or one of its ancestors.
"""

from __future__ import annotations

import torch

from kernels._launch import KernelInputError, check_local_parents, check_offsets

MASK_BITS = 64


def local_index(offsets: torch.Tensor) -> torch.Tensor:
    """int64 [T]: each row's index within its request. Shape: offsets [bs + 1]."""
    offsets = offsets.to(torch.int64)
    counts = offsets.diff()
    starts = torch.repeat_interleave(offsets[:-1], counts)
    return torch.arange(int(offsets[-1]), device=offsets.device) - starts


def ancestor_masks(offsets: torch.Tensor, parents: torch.Tensor) -> torch.Tensor:
    """int64 [T]: ancestor-or-self bits per row. Shape: offsets [bs + 1], parents int [T] (local, root -1).

    Raises KernelInputError when a request has more than 64 rows or parents break level order.
    """
    check_offsets("offsets", offsets, parents.numel(), MASK_BITS)
    check_local_parents("parents", parents, offsets, root_first=True)
    local = local_index(offsets)
    parents = parents.to(torch.int64)
    global_parent = torch.where(parents >= 0, parents + (torch.arange(len(parents), device=parents.device) - local), -1)
    own = torch.bitwise_left_shift(torch.ones_like(local), local)
    masks = own.clone()
    has_parent = global_parent >= 0
    safe_parent = global_parent.clamp(min=0)
    # Each pass pulls the parent's mask: after depth passes every row holds its whole path.
    for _ in range(int(local.max()) + 1 if len(local) else 0):
        pulled = torch.where(has_parent, masks[safe_parent], 0) | own
        if torch.equal(pulled, masks):
            break
        masks = pulled
    return masks


def mask_bits(masks: torch.Tensor, width: int) -> torch.Tensor:
    """bool [T, width]: bit j of each mask. Shape: masks int64 [T]."""
    j = torch.arange(width, device=masks.device, dtype=torch.int64)
    return ((masks[:, None] >> j[None, :]) & 1).bool()


def check_tree_mask(tree_mask: torch.Tensor, offsets: torch.Tensor) -> None:
    """Every row sets its own bit and no bit at or beyond its request's token count (one host sync)."""
    host = tree_mask.detach().cpu()
    host_offsets = offsets.detach().cpu().to(torch.int64)
    local = local_index(host_offsets)
    counts = torch.repeat_interleave(host_offsets.diff(), host_offsets.diff())
    self_set = ((host >> local) & 1) == 1
    shift = counts.clamp(max=MASK_BITS - 1)
    beyond = torch.where(counts < MASK_BITS, host >> shift, 0)  # arithmetic shift: any high bit -> != 0
    bad = ~self_set | (beyond != 0)
    if bool(bad.any()):
        row = int(torch.nonzero(bad)[0])
        problem = "does not set its own bit" if not bool(self_set[row]) else "sets a bit beyond its request's tokens"
        raise KernelInputError(
            f"tree_mask[{row}] = {int(host[row]):#x} (local token {int(local[row])} of {int(counts[row])}) {problem}"
        )
