"""Shared builders for the policy tests: a fake cost model, hand-built and random lattices, contexts.

No tests here. The fake cost mimics a roofline: flat in V below `knee` tokens (memory-bound),
then `per_token` seconds per token (compute-bound); eager steps pay `eager_extra`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from echo_sim.cost.graphs import TokenBucketGraphs
from echo_sim.policies.base import DraftShape, Outcome, StepContext
from echo_sim.testing import full_trace, random_trace
from echo_sim.trees import ROOT_PARENT, LatticeBatch, accepted_nodes


@dataclass(frozen=True)
class FakeCost(TokenBucketGraphs):
    base: float = 1e-2
    per_token: float = 1e-5
    knee: int = 256
    eager_extra: float = 2e-3
    draft_per_level: float = 1e-3
    graph_buckets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
    source: str = "fake"

    def verify_time(self, verify_tokens, batch_size, kv_tokens, eager=False):
        tokens = np.asarray(verify_tokens, dtype=np.float64)
        return self.base + self.per_token * np.maximum(tokens, self.knee) + (self.eager_extra if eager else 0.0)

    def draft_time(self, batch_size, depth, width, kv_tokens=0):
        return self.draft_per_level * depth

    def ragged_draft_time(self, batch_size, level_tokens, kv_tokens=0):
        return self.draft_per_level * len(level_tokens)

    def graph_bucket(self, verify_tokens):
        fits = [b for b in self.graph_buckets if b >= verify_tokens]
        return min(fits) if fits else None


def lattice(requests: list[list[tuple[int, float, bool]]]) -> LatticeBatch:
    """A LatticeBatch from per-request node lists (parent, cumulative score, on_path), level order.

    parent is the local index (-1 = child of the root); depth and cond_prob are derived.
    """
    parent, score, on_path, depth, cond, offsets = [], [], [], [], [], [0]
    for nodes in requests:
        for p, s, o in nodes:
            parent.append(p), score.append(s), on_path.append(o)
            base = offsets[-1]
            depth.append(1 if p == ROOT_PARENT else depth[base + p] + 1)
            cond.append(s if p == ROOT_PARENT else s / score[base + p])
        offsets.append(len(parent))
    n = len(parent)
    return LatticeBatch(
        offsets=np.asarray(offsets, dtype=np.int64),
        token=np.arange(n, dtype=np.int32),
        parent=np.asarray(parent, dtype=np.int32),
        depth=np.asarray(depth, dtype=np.int32),
        cond_prob=np.asarray(cond, dtype=np.float32),
        score=np.asarray(score, dtype=np.float32),
        on_path=np.asarray(on_path, dtype=bool),
        spine_run=np.zeros(len(requests), dtype=np.int32),
    )


def no_nodes(spine_run: list[int], has_confidences: bool = True) -> LatticeBatch:
    """Requests whose lattices are empty (no drafting, or a chain-only trace when has_confidences=False)."""
    return LatticeBatch(
        offsets=np.zeros(len(spine_run) + 1, dtype=np.int64), token=np.zeros(0, np.int32),
        parent=np.zeros(0, np.int32), depth=np.zeros(0, np.int32), cond_prob=np.zeros(0, np.float32),
        score=np.zeros(0, np.float32), on_path=np.zeros(0, bool), spine_run=np.asarray(spine_run, np.int32),
        has_confidences=has_confidences,
    )


def random_lattices(seed: int, batch: int, width: int = 2, depth: int = 3, agreement: float = 0.7) -> LatticeBatch:
    """`batch` random lattices (one position of each of `batch` random requests)."""
    trace = random_trace(np.random.default_rng(seed), num_requests=batch, output_len=(2, 2),
                         width=width, depth=depth, agreement=agreement)
    return trace.lattice_batch(trace.position_offsets[:-1] + 1)


def context(lattices: LatticeBatch, cost=None, draft: DraftShape | None = None, kv: int = 500) -> StepContext:
    """The step context an engine would pass: drafted shape = the lattices' own unless given."""
    first = lattices.depth[lattices.offsets[0] : lattices.offsets[1]] if lattices.batch_size else []
    width = max(int(np.sum(np.asarray(first) == 1)), 1)
    depth = int(lattices.max_depth)
    return StepContext(
        batch_size=lattices.batch_size,
        kv_lens=np.full(lattices.batch_size, kv, dtype=np.int64),
        cost=cost or FakeCost(),
        draft=draft or DraftShape(depth, width),
        trace_depth=depth,
        trace_width=width,
    )


def concat(*batches: LatticeBatch) -> LatticeBatch:
    """One LatticeBatch holding the requests of several (ragged sizes allowed)."""
    sizes = np.concatenate([np.diff(b.offsets) for b in batches])
    columns = {
        name: np.concatenate([getattr(b, name) for b in batches])
        for name in ("token", "parent", "depth", "cond_prob", "score", "on_path", "spine_run")
    }
    return LatticeBatch(offsets=np.concatenate(([0], np.cumsum(sizes))).astype(np.int64), **columns)


def run_step(policy, lattices: LatticeBatch, ctx: StepContext):
    """One select + greedy verify + observe, as an engine does; returns (selection, outcome)."""
    selection = policy.select(lattices, ctx)
    if selection.chain is not None:
        accepted = np.zeros(lattices.num_nodes, dtype=bool)
        depth = np.minimum(lattices.spine_run, selection.chain).astype(np.int32)
    else:
        accepted, depth = accepted_nodes(lattices, selection.nodes)
    outcome = Outcome(lattices=lattices, selection=selection, accepted=accepted, accepted_depth=depth)
    policy.observe(outcome)
    return selection, outcome


def full_lattices(seed: int, batch: int, width: int = 4, depth: int = 6, alpha: float = 0.25) -> LatticeBatch:
    """`batch` lattices with every candidate stored, as the shipped traces have: one position of each
    of `batch` requests of echo_sim.testing.full_trace."""
    trace = full_trace(seed, requests=batch, positions=1, k=width, depth=depth, alpha=alpha)
    return trace.lattice_batch(trace.position_offsets[:-1])
