"""Random-initialised models of real shapes, for timing-only runs (acceptance comes from a trace).

A forward's time depends on shapes, not on weight values, so a GPU calibration of Llama-3.1-8B or
Qwen3-8B needs no download: build the architecture from its published config with random weights.
The draft is an EAGLE-style head of the same width: one decoder layer plus the LM head (EAGLE-3
also fuses three hidden states through an input projection; that fc adds a 3·d×d matmul per draft
token, under 2 % of a layer, and is left out).

Shapes come from the models' published config.json files (Hugging Face: meta-llama/Llama-3.1-8B,
Qwen/Qwen3-8B); `tiny-llama` and `tiny-qwen3` are the same architectures scaled down for tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import transformers


@dataclass(frozen=True)
class ModelShape:
    architecture: str  # "llama" or "qwen3"
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    rope_theta: float
    max_position_embeddings: int


SHAPES = {
    "llama-3.1-8b": ModelShape("llama", 4096, 14336, 32, 32, 8, 128, 128256, 500000.0, 131072),
    "qwen3-8b": ModelShape("qwen3", 4096, 12288, 36, 32, 8, 128, 151936, 1000000.0, 40960),
    "tiny-llama": ModelShape("llama", 64, 128, 2, 4, 2, 16, 96, 500000.0, 4096),
    "tiny-qwen3": ModelShape("qwen3", 64, 128, 2, 4, 2, 16, 96, 1000000.0, 4096),
}


class UnknownShapeError(ValueError):
    pass


def model_config(name: str, layers: int | None = None):
    """The transformers config of a named shape (optionally with fewer layers: the draft head)."""
    if name not in SHAPES:
        raise UnknownShapeError(f"unknown model shape {name!r}; known: {', '.join(SHAPES)}")
    shape = SHAPES[name]
    common = dict(
        hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=layers or shape.num_hidden_layers, num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads, head_dim=shape.head_dim, vocab_size=shape.vocab_size,
        max_position_embeddings=shape.max_position_embeddings, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
    )
    if shape.architecture == "llama":
        return transformers.LlamaConfig(**common)
    return transformers.Qwen3Config(**common)


def random_model(name: str, dtype: torch.dtype, device: str, seed: int = 0, layers: int | None = None):
    """A randomly initialised causal LM of the named shape, in eval mode, built on `device`.

    The RNG is forked, so building a model leaves the caller's global RNG state untouched."""
    config = model_config(name, layers)
    devices = [torch.device(device)] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.device(device):
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def random_pair(name: str, dtype: torch.dtype, device: str, seed: int = 0):
    """(target, draft head): the full model and a one-layer EAGLE-style draft of the same width."""
    return random_model(name, dtype, device, seed), random_model(name, dtype, device, seed + 1, layers=1)
