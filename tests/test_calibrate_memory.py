"""echo-run calibrate's caches: one storage per model for every KV-length group (the 8B grid's
groups summed would not fit a GPU), each group's view of the right shape and independent lengths."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from echo_runtime.calibrate import shared_caches  # noqa: E402
from echo_runtime.random_models import model_config  # noqa: E402


def test_groups_share_one_storage_as_large_as_the_largest():
    config = model_config("tiny-llama")
    groups = {128: (8, 150), 1024: (2, 1100), 4096: (1, 4200)}
    caches = shared_caches(config, groups, torch.float32, "cpu")
    head_dim, heads = config.head_dim, config.num_key_value_heads
    for kv, (slots, capacity) in groups.items():
        cache = caches[kv]
        assert tuple(cache.keys[0].shape) == (slots, heads, capacity, head_dim) and cache.num_slots == slots
        assert len(cache.keys) == config.num_hidden_layers and cache.capacity == capacity
    for layer in range(config.num_hidden_layers):
        bases = {caches[kv].keys[layer].untyped_storage().data_ptr() for kv in groups}
        assert len(bases) == 1, "groups must view one storage per layer"
        largest = max(s * c for s, c in groups.values()) * heads * head_dim * 4
        assert caches[4096].keys[layer].untyped_storage().nbytes() == largest
        assert caches[128].keys[layer].untyped_storage().data_ptr() != caches[128].values[layer].untyped_storage().data_ptr()
    caches[128].lengths[0] = 5
    assert caches[1024].lengths[0] == 0
