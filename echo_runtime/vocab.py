"""Trace token ids inside a model's vocabulary, for timing-only runs (random weights of a real
shape, acceptance replayed from a trace of another pair).

The shipped traces come from Qwen2.5-Coder (ids up to 151,645); Llama-3.1-8B's embedding has
128,256 rows, so 0.45 % of the MT-Bench trace's lattice nodes would index past it (a device-side
assert on a GPU). `fold_token_ids` is the one rule every timing-only path uses (echo-run live and
validate, via TraceSignals and the synthetic prompts): id mod vocab_size. It is deterministic and
keeps every id in range; what it changes cannot change a timing, since a forward costs the same
whichever rows it embeds, and acceptance comes from the trace, not from the ids (two sibling ids
may fold onto one: nothing compares them in a replay).
"""

from __future__ import annotations

import numpy as np


def fold_token_ids(ids, vocab_size: int) -> np.ndarray:
    """int64 ids mod vocab_size (same shape; negative ids, e.g. -1 for "none", stay as they are)."""
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    ids = np.asarray(ids, dtype=np.int64)
    return np.where(ids >= 0, ids % vocab_size, ids)
