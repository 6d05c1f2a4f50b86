"""The rules of one engine step, written once for both engines.

The simulator (echo_sim.engine, simulated clock) and the runtime (echo_runtime.engine, real
forwards) take the same step (docs/ARCHITECTURE.md, "One step"):

    shape = executed_draft(policy.draft, lattice depth, lattice width)   # what the drafter grows
    selection = policy.select(lattices, context)
    verify_tokens, attention_pairs = verify_shape(kv_lens, drafted, padding)
    accepted_depth = chain_accepted(spine_run, chain)   # chains; trees walk their selected nodes
    committed = committed_counts(accepted_depth, remaining)
    policy.observe(outcome); commit

and describe it with one StepRecord. Anything an engine decides about a step that the other
engine must decide the same way lives here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from operator import attrgetter

import numpy as np
import pandas as pd

from echo_sim.policies.base import DraftShape


def policy_drafts(policy) -> bool:
    """A policy that never drafts (`ar`) runs no draft model: no draft prefill, no draft cache."""
    return policy.draft.depth > 0


def executed_draft(draft: DraftShape, lattice_depth: int, lattice_width: int) -> DraftShape:
    """The draft actually grown: a tree is clamped to the lattice's depth and width (what the trace
    holds, or what the runtime's drafter is configured to grow); a chain (width 1) replays the
    spine and is not clamped; no drafting stays no drafting."""
    if draft.depth <= 0 or draft.width == 1:
        return draft
    return DraftShape(depth=min(draft.depth, lattice_depth), width=min(draft.width, lattice_width))


FEW_ROWS = 16  # up to this many requests, plain ints beat numpy's per-call set-up (~1-2 µs a call)


def int_sum(values: np.ndarray) -> int:
    """Σ of an integer array [bs] as a Python int (a few values in plain ints; integers add exactly
    either way, so the two paths agree)."""
    return sum(values.tolist()) if len(values) <= FEW_ROWS else int(values.sum())


def int_sums(table: np.ndarray) -> list[int]:
    """Σ of each row of an integer table [k, bs], as Python ints (int_sum per row)."""
    if table.shape[1] <= FEW_ROWS:
        return [sum(row) for row in table.tolist()]
    return table.sum(axis=1).tolist()


def verify_shape(kv_lens: np.ndarray, drafted: np.ndarray, padding: int) -> tuple[int, int]:
    """(verify tokens V, attention pairs) of the target's verification forward.

    Each request verifies its root plus its n_r selected draft tokens against its KV cache of
    kv_lens tokens: V = Σ (1 + n_r) + graph padding; pairs = Σ (1 + n_r)·(kv_r + 1 + n_r)."""
    if len(drafted) <= FEW_ROWS:  # the same integer sums in plain ints
        verified = [1 + n for n in np.asarray(drafted, dtype=np.int64).tolist()]
        kv = np.asarray(kv_lens, dtype=np.int64).tolist()
        return sum(verified) + int(padding), sum(n * (k + n) for n, k in zip(verified, kv))
    verified = 1 + np.asarray(drafted, dtype=np.int64)
    kv_lens = np.asarray(kv_lens, dtype=np.int64)
    return int(verified.sum() + padding), int(np.dot(verified, kv_lens + verified))


def chain_accepted(spine_run: np.ndarray, chain: np.ndarray) -> np.ndarray:
    """int64 [bs]: a chain of c drafts over the spine accepts min(spine run, c) (TRACES.md "Chains")."""
    return np.minimum(np.asarray(spine_run), np.asarray(chain)).astype(np.int64)


def committed_counts(accepted_depth: np.ndarray, remaining: np.ndarray) -> np.ndarray:
    """int64 [bs]: tokens a step commits per request: accepted drafts + the bonus token, never beyond
    the request's remaining output (an end-of-sequence token cuts the runtime's further)."""
    return np.minimum(np.asarray(accepted_depth, dtype=np.int64) + 1, np.asarray(remaining, dtype=np.int64))


@dataclass(slots=True)
class StepRecord:
    """One engine step, as both engines record it (times in seconds from the run's start).

    batch_size      decoding requests (prefilling ones excluded)
    prefill_tokens  prompt tokens prefilled in this step; prefill_context: tokens they attend to
    verify_tokens   V of the verify forward (roots + selected + padding); selected: draft nodes in
                    it; padding: graph-bucket padding; budget: the policy's B (NaN if it has none)
    eager           the verify shape ran outside a captured graph
    draft_depth/width  the executed draft shape; accepted: Σ accepted depth; committed: Σ tokens
    kv_tokens       Σ KV length of the decoding requests; attention_pairs: query-key pairs
    draft_time      seconds spent drafting (charged by the cost model, or measured)
    oracle_depth    Σ the oracle's accepted depth at the same positions (simulator only; 0 live)
    laps            measured seconds per phase ("prefill_s", "draft_s", …, "wall_s"); runtime only
    rows            (request index, position before the step) per decoding request; runtime only
    draft_levels    tokens of each draft forward the drafter ran (level 1 with its catch-up tokens,
                    then the expanded frontier nodes); runtime only
    """

    start: float
    end: float
    batch_size: int = 0
    prefill_tokens: int = 0
    verify_tokens: int = 0
    selected: int = 0
    padding: int = 0
    budget: float = math.nan
    eager: bool = False
    draft_depth: int = 0
    draft_width: int = 0
    accepted: int = 0
    committed: int = 0
    kv_tokens: int = 0
    draft_time: float = 0.0
    oracle_depth: int = 0
    attention_pairs: int = 0
    prefill_context: int = 0
    laps: dict = field(default_factory=dict)
    rows: tuple = ()
    draft_levels: tuple = ()

    @property
    def seconds(self) -> float:
        return self.end - self.start


# The columns of a step table: every StepRecord field but the runtime's nested ones.
STEP_FIELDS = tuple(f.name for f in fields(StepRecord) if f.name not in ("laps", "rows", "draft_levels"))
STEP_DTYPES = {f.name: {"float": np.float64, "int": np.int64, "bool": np.bool_}[f.type]
               for f in fields(StepRecord) if f.name in STEP_FIELDS}
step_row = attrgetter(*STEP_FIELDS)  # record -> tuple of its STEP_FIELDS values


def step_frame(records: list[StepRecord]) -> pd.DataFrame:
    """One row per step, STEP_FIELDS in order, with a leading `step` index; measured laps (runtime)
    become columns of their own."""
    table = pd.DataFrame.from_records([step_row(r) for r in records], columns=list(STEP_FIELDS))
    table.insert(0, "step", np.arange(len(table)))
    laps = sorted({name for r in records for name in r.laps})
    for name in laps:
        table[name] = [r.laps.get(name, 0.0) for r in records]
    return table
