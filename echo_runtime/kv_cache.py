"""A contiguous per-slot KV cache with tree scratch and rollback.

Each running request owns one *slot*. A slot's storage is split at `lengths[slot]`:

    [0, lengths[slot])                 the committed prefix: K/V of tokens that are final
    [lengths[slot], capacity)          scratch: K/V of tree tokens of the current step
                                       (verified draft nodes, or the drafter's frontier nodes)

A forward writes its tree tokens into scratch at `lengths + scratch_index`; attention sees the
whole prefix plus the scratch entries a token's tree mask allows (its ancestors and itself).
After verification `keep` moves the accepted path's scratch entries (root first, then accepted
nodes in depth order) to the end of the prefix and grows `lengths`: rejected nodes are dropped by
never being copied (rollback). A token's storage index after `keep` equals its position, so the
prefix is exactly what a fresh prefill of the same tokens would hold.

Shape:
    keys[layer], values[layer]   [slots, kv_heads, capacity, head_dim]
    lengths                      int64 numpy [slots]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class CacheCapacityError(ValueError):
    """A request needs more KV storage than its slot holds, or the caches more memory than there is."""


def available_bytes(device) -> int | None:
    """Memory a new allocation can take now: free GPU memory, or the host's MemAvailable."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    free = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]  # an address-space limit (ulimit -v) binds first
        if limit != resource.RLIM_INFINITY:
            for line in open("/proc/self/status"):
                if line.startswith("VmSize:"):
                    room = limit - int(line.split()[1]) * 1024
                    free = room if free is None else min(free, room)
    except (OSError, ImportError, ValueError):
        pass
    return free  # None: unknown (not Linux), no check


def check_memory(needed: int, device, what: str) -> None:
    """CacheCapacityError before allocating `needed` bytes that the device does not have free."""
    free = available_bytes(device)
    if free is not None and needed > 0.9 * free:
        raise CacheCapacityError(f"{what} needs {needed / 2**30:.1f} GiB, {free / 2**30:.1f} GiB is available "
                                 f"on {torch.device(device).type}: lower --concurrency or the lengths")


@dataclass
class KVCache:
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    lengths: np.ndarray

    @staticmethod
    def nbytes(config, slots: int, capacity: int, dtype: torch.dtype) -> int:
        """Bytes `allocate` would take (keys and values of every layer)."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        elements = 2 * config.num_hidden_layers * slots * config.num_key_value_heads * capacity * head_dim
        return elements * torch.empty(0, dtype=dtype).element_size()

    @classmethod
    def allocate(cls, config, slots: int, capacity: int, dtype: torch.dtype, device) -> "KVCache":
        """Zeroed storage for `slots` requests of up to `capacity` tokens (prefix + scratch)."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        shape = (slots, config.num_key_value_heads, capacity, head_dim)
        layers = config.num_hidden_layers
        return cls(
            keys=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)],
            values=[torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)],
            lengths=np.zeros(slots, dtype=np.int64),
        )

    @property
    def capacity(self) -> int:
        return int(self.keys[0].shape[2])

    @property
    def num_slots(self) -> int:
        return int(self.keys[0].shape[0])

    def check_room(self, slots: np.ndarray, scratch_tokens: np.ndarray) -> None:
        """Raise CacheCapacityError when prefix + scratch would overflow a slot."""
        need = self.lengths[slots] + scratch_tokens
        if need.size and int(need.max()) > self.capacity:
            worst = int(np.argmax(need))
            raise CacheCapacityError(
                f"KV slot {int(slots[worst])} needs {int(need[worst])} tokens, capacity is {self.capacity}"
            )

    def store(self, layer: int, slot_of_token: torch.Tensor, storage: torch.Tensor,
              key: torch.Tensor, value: torch.Tensor) -> None:
        """Write K/V of tokens. Shape: slot_of_token, storage int64 [t]; key, value [t, kv_heads, head_dim]."""
        self.keys[layer][slot_of_token, :, storage] = key
        self.values[layer][slot_of_token, :, storage] = value

    def window(self, layer: int, slots: torch.Tensor, upto: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of storage [0, upto) for these slots. Shape: [bs, kv_heads, upto, head_dim] each."""
        return self.keys[layer][slots, :, :upto], self.values[layer][slots, :, :upto]

    def keep(self, slots: np.ndarray, kept_scratch: list[np.ndarray]) -> None:
        """Commit scratch entries kept_scratch[r] (in order) of slot slots[r] to its prefix; drop the rest."""
        rows, src, dst = [], [], []
        for slot, kept in zip(slots, kept_scratch):
            base = int(self.lengths[slot])
            kept = np.asarray(kept, dtype=np.int64)
            rows.append(np.full(len(kept), slot, dtype=np.int64))
            src.append(base + kept)
            dst.append(base + np.arange(len(kept), dtype=np.int64))
            self.lengths[slot] = base + len(kept)
        if not rows:
            return
        rows_t, src_t, dst_t = (torch.as_tensor(np.concatenate(a), device=self.keys[0].device)
                                for a in (rows, src, dst))
        if len(rows_t) == 0:
            return
        for layer in range(len(self.keys)):
            # gather first, then write: src >= dst, so overlapping moves stay correct
            moved_k = self.keys[layer][rows_t, :, src_t]
            moved_v = self.values[layer][rows_t, :, src_t]
            self.keys[layer][rows_t, :, dst_t] = moved_k
            self.values[layer][rows_t, :, dst_t] = moved_v

    def release(self, slot: int) -> None:
        """Forget a finished request's prefix (its storage is reused by the next one)."""
        self.lengths[slot] = 0
