"""`static` and `static-chain`: SGLang's EAGLE-2/3 default tree, one fixed shape for every request.

Per request, verify the top-(N−1) lattice nodes by cumulative score (tie-break: score desc,
depth asc, node asc), every step, whatever the load; the drafter grows S levels of width k.
With k = 1 the draft is a chain of S tokens, replayed from the spine (TRACES.md "Chains"):
accepted = min(spine_run, S). As in SGLang, a chain verifies exactly S drafts, so N is
normalised to S + 1 when k = 1. Preset `static-chain`: S=3, k=1, N=4.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from echo_sim.policies.base import DraftShape, Selection, StepContext
from echo_sim.policies.common import fitted_selection, per_request_top, require_confidences
from echo_sim.policies.knobs import KnobbedPolicy, check_range
from echo_sim.trees import LatticeBatch


def static_flags(depth: int, width: int, draft_tokens: int) -> dict[str, object]:
    return {
        "--speculative-num-steps": depth,
        "--speculative-eagle-topk": width,
        "--speculative-num-draft-tokens": draft_tokens,
    }


def static_tree(lattices: LatticeBatch, context: StepContext, draft_tokens: int, **fields) -> Selection:
    """Per request the top-(draft_tokens − 1) nodes by score, padded to the step's graph bucket."""
    quota = np.full(lattices.batch_size, draft_tokens - 1, dtype=np.int64)
    nodes = per_request_top(lattices, quota)
    return fitted_selection(context.cost, nodes, lattices.batch_size, int(nodes.sum()), **fields)


def static_chain(lattices: LatticeBatch, context: StepContext, length: int, **fields) -> Selection:
    """A chain of `length` spine drafts per request (never more than were drafted)."""
    length = min(length, context.draft.depth)
    bs = lattices.batch_size
    chain = np.full(bs, length, dtype=np.int32)
    nodes = np.zeros(lattices.num_nodes, dtype=bool)
    return fitted_selection(context.cost, nodes, bs, bs * length, chain=chain, **fields)


@dataclass
class StaticPolicy(KnobbedPolicy):
    """Fixed tree (or chain when k = 1): S levels of width k, N tokens verified per request."""

    name: ClassVar[str] = "static"
    S: int = 5
    k: int = 4
    N: int = 16
    draft: DraftShape = field(init=False)

    def __post_init__(self) -> None:
        check_range(self.name, "S", self.S, 1)
        check_range(self.name, "k", self.k, 1)
        check_range(self.name, "N", self.N, 1)
        if self.k == 1:
            self.N = self.S + 1  # a chain verifies its S drafts (SGLang overrides N the same way)
        self.draft = DraftShape(depth=self.S, width=self.k)

    def select(self, lattices: LatticeBatch, context: StepContext) -> Selection:
        budget = lattices.batch_size * (self.N - 1)
        if self.k == 1:
            return static_chain(lattices, context, self.S, budget=budget)
        require_confidences(self.name, lattices)
        return static_tree(lattices, context, self.N, budget=budget)

    def sglang_flags(self) -> dict[str, object]:
        return static_flags(self.S, self.k, self.N)


@dataclass
class StaticChainPolicy(StaticPolicy):
    """`static` preset: a chain of 3 drafts (SGLang topk=1, num_steps=3, num_draft_tokens=4)."""

    name: ClassVar[str] = "static-chain"
    S: int = 3
    k: int = 1
    N: int = 4
