"""Helpers for the runtime tests: a tiny random Qwen2 pair, a hand-written cost."""

from __future__ import annotations

import copy

import numpy as np
import torch
import transformers
from echo_sim.cost.graphs import TokenBucketGraphs


def tiny_qwen2(seed: int, vocab: int, layers: int = 2, hidden: int = 32, heads: int = 4, kv_heads: int = 2):
    """Random Qwen2 in float64 with peaked weights (distinct probabilities, confident drafts)."""
    config = transformers.Qwen2Config(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=256, tie_word_embeddings=True)
    model = transformers.Qwen2ForCausalLM(config).to(torch.float64).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" not in name:
                param.copy_(torch.randn(param.shape, generator=generator, dtype=torch.float64) * 0.3)
    return model


def tiny_pair_models(vocab: int, noise: float = 0.15):
    """(target, draft): the draft is the target with noise on its weights, so it agrees often but
    not always (both acceptance and rejection happen)."""
    target = tiny_qwen2(1, vocab)
    draft = copy.deepcopy(target)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in draft.parameters():
            param.add_(noise * torch.randn(param.shape, generator=generator, dtype=torch.float64))
    return target, draft


class LinearCost(TokenBucketGraphs):
    """A hand-written step-time model: 10 ms + 1 ms per verified token, 2 ms per draft level."""

    source = "test:linear"
    graph_buckets: tuple[int, ...] = ()

    def verify_time(self, verify_tokens, batch_size, kv_tokens, eager=False):
        return 0.010 + 0.001 * np.asarray(verify_tokens, dtype=np.float64)

    def draft_time(self, batch_size, depth, width, kv_tokens=0, extend_tokens=None):
        return 0.002 * depth

    def ragged_draft_time(self, batch_size, level_tokens, kv_tokens=0):
        return 0.002 * len(level_tokens)

    def prefill_time(self, prefill_tokens, prefill_context=0, with_draft=True):
        return 0.0

    def step_time(self, shape):
        return float(self.verify_time(shape.verify_tokens, shape.batch_size, shape.kv_tokens)) + \
            self.draft_time(shape.batch_size, shape.draft_depth, shape.draft_width)

    def components(self, shape):
        return {"verify": self.step_time(shape)}

    def graph_bucket(self, verify_tokens):
        return None


class CheapDraftCost(LinearCost):
    """Drafting pays (10 ms + 0.2 ms per verified token, 0.5 ms per draft level) and a prefill
    costs 0.4 ms per prompt token, so echo drafts, adapts its shape and its budget sees T_prefill."""

    def verify_time(self, verify_tokens, batch_size, kv_tokens, eager=False):
        return 0.010 + 0.0002 * np.asarray(verify_tokens, dtype=np.float64)

    def draft_time(self, batch_size, depth, width, kv_tokens=0, extend_tokens=None):
        return 0.0005 * depth

    def ragged_draft_time(self, batch_size, level_tokens, kv_tokens=0):
        return 0.0005 * len(level_tokens)

    def prefill_time(self, prefill_tokens, prefill_context=0, with_draft=True):
        return 0.0004 * prefill_tokens

    def components(self, shape):
        return {"prefill": self.prefill_time(shape.prefill_tokens),
                "verify": float(self.verify_time(shape.verify_tokens, shape.batch_size, shape.kv_tokens)),
                "draft": self.draft_time(shape.batch_size, shape.draft_depth, shape.draft_width)}


CHAT_TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}<|im_end|>{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def tiny_tokenizer():
    """A real Qwen2Tokenizer over single characters (41 tokens), with a chat template."""
    chars = ["Ġ"] + list("abcdefghijklmnopqrstuvwxyz0123456789")
    tokenizer = transformers.Qwen2Tokenizer(vocab={c: i for i, c in enumerate(chars)}, merges=[],
                                            unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
