"""Greedy decoding of the target for a group of prompts at once (left-padded, one KV cache).

Decoding is memory-bound on a CPU: one step reads every weight once whatever the batch, so a group
of B prompts costs little more per step than one. Left padding is masked out (2D attention mask,
position ids counted from each prompt's first real token), so every row computes the same function
as a lone run; only the summation order inside the matrix products can differ in the last bits.
A row stops at an EOS token (kept as its last token) or at max_new_tokens; finished rows ride along
until the whole group is done.
"""

from __future__ import annotations

import numpy as np
import torch


@torch.inference_mode()
def greedy_decode(model, prompts: list[np.ndarray], max_new_tokens: int, eos_ids: list[int]):
    """Greedy continuations of `prompts` (token ids, int [n0_i] each).

    Returns one (y int64 tensor [L_i], probability of each y_t float32 [L_i]) per prompt.
    """
    from transformers import DynamicCache

    width = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.from_numpy(np.asarray(prompt, dtype=np.int64))
        mask[row, width - len(prompt):] = 1
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=position,
                cache=DynamicCache(config=model.config), use_cache=True, logits_to_keep=1)
    next_position = position[:, -1:] + 1
    tokens, probs = [[] for _ in prompts], [[] for _ in prompts]
    done = [False] * len(prompts)
    while True:
        logits = out.logits[:, -1].float()
        step_tokens = torch.argmax(logits, dim=-1)
        step_probs = torch.softmax(logits, dim=-1).gather(1, step_tokens[:, None])[:, 0]
        for row in range(len(prompts)):
            if not done[row]:
                tokens[row].append(int(step_tokens[row]))
                probs[row].append(float(step_probs[row]))
                done[row] = tokens[row][-1] in eos_ids or len(tokens[row]) == max_new_tokens
        if all(done):
            break
        mask = torch.cat([mask, torch.ones(len(prompts), 1, dtype=torch.long)], dim=1)
        out = model(input_ids=step_tokens[:, None], attention_mask=mask, position_ids=next_position,
                    cache=out.cache, use_cache=True)
        next_position = next_position + 1
    return [(torch.tensor(t), np.asarray(p, dtype=np.float32)) for t, p in zip(tokens, probs)]
