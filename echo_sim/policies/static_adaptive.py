"""`static-adaptive`: `static` whose depth S (and N) follows an EMA of accepted length per
batch-size bucket (SGLang adaptive steps, PRs #21599/#24055, `adaptive_spec_params.py`).

Controller, one independent slot per batch-size bucket (the slot of a batch of size bs is the
largest bucket key <= bs):

    bucket key   candidate S      down hysteresis h↓   (SGLang DEFAULT_ADAPTIVE_CONFIG)
    1            1, 3, 5, 7       -0.25
    8            0, 1, 3           0
    32           0, 1              0
    64           0                 0

    ema ← (1 − α)·ema + α·mean_r(a_r)      a_r = accepted drafts of request r (bonus excluded),
                                            only while S > 0; α = 0.2; ema starts at S₀ − 1
    after `warmup` = 10 steps, every `interval` = 5 steps:
      S = 0:  probe the next candidate up (ema restarts at that S − 1 if it is negative)
      else:   step down to the previous candidate p while ema <= (0.5 if p = 0 else p − 0.5) + h↓;
              if it did not step down, step up while ema > S − 0.5   (up hysteresis 0)
    S₀ = the `S` knob if it is a candidate of the slot, else the slot's middle candidate.

N scales with S at the static policy's tokens per level: N(S) = 1 + round(S·(N − 1)/S_knob)
(defaults S=5, N=16: 3 tokens per level, so N(1)=4, N(3)=10, N(7)=22); S = 0 is plain
autoregressive decoding (N = 1, no draft). SGLang's own adaptive mode supports topk = 1 only:
`static-adaptive:k=1` is that (a chain of S drafts, N = S + 1); with k > 1 the same controller
drives a k-wide tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from echo_sim.policies.base import DraftShape, Outcome, Selection, StepContext
from echo_sim.policies.common import require_confidences
from echo_sim.policies.knobs import KnobbedPolicy, check_range
from echo_sim.policies.static import static_chain, static_flags, static_tree
from echo_sim.trees import LatticeBatch

# bucket key -> (candidate S values, down hysteresis); see the module docstring for the source.
BUCKET_STEPS: dict[int, tuple[tuple[int, ...], float]] = {
    1: ((1, 3, 5, 7), -0.25),
    8: ((0, 1, 3), 0.0),
    32: ((0, 1), 0.0),
    64: ((0,), 0.0),
}


def bucket_key(batch_size: int) -> int:
    """The slot of a batch: the largest bucket key <= batch_size (the smallest for tiny batches)."""
    keys = [key for key in BUCKET_STEPS if key <= batch_size]
    return max(keys) if keys else min(BUCKET_STEPS)


@dataclass
class AdaptiveSteps:
    """One slot's EMA controller (formula in the module docstring); `steps` is its current S."""

    candidates: tuple[int, ...]
    initial: int
    alpha: float = 0.2
    warmup: int = 10
    interval: int = 5
    down_hysteresis: float = 0.0
    steps: int = field(init=False)
    ema: float = field(init=False)
    updates: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        middle = self.candidates[len(self.candidates) // 2]
        self.steps = self.initial if self.initial in self.candidates else middle
        self.ema = float(self.steps - 1)

    def update(self, mean_accepted: float) -> int:
        """Feed one step's mean accepted drafts; returns the (possibly new) S."""
        if self.steps > 0:
            self.ema = (1 - self.alpha) * self.ema + self.alpha * mean_accepted
        self.updates += 1
        if self.updates > self.warmup and (self.updates - self.warmup) % self.interval == 0:
            self.steps = self._target()
        return self.steps

    def _target(self) -> int:
        at = self.candidates.index(self.steps)
        if self.steps == 0:  # probe speculation again after a no-speculation interval
            target = self.candidates[min(at + 1, len(self.candidates) - 1)]
            if target > 0 and self.ema < 0:
                self.ema = float(target - 1)
            return target
        start = at
        while at > 0:
            previous = self.candidates[at - 1]
            drop = (0.5 if previous == 0 else previous - 0.5) + self.down_hysteresis
            if self.ema > drop:
                break
            at -= 1
        if at == start:
            while at < len(self.candidates) - 1 and self.ema > self.candidates[at] - 0.5:
                at += 1
        return self.candidates[at]


@dataclass
class StaticAdaptivePolicy(KnobbedPolicy):
    """`static` tree with S and N per batch-size bucket from an EMA of accepted length."""

    name: ClassVar[str] = "static-adaptive"
    note: ClassVar[str] = (
        "flags give the shape last used; SGLang's adaptive steps (speculative_adaptive_config) "
        "support topk=1 only, so per-bucket tree depths are not an SGLang option"
    )
    S: int = 5
    k: int = 4
    N: int = 16
    alpha: float = 0.2
    warmup: int = 10
    interval: int = 5
    draft: DraftShape = field(init=False)
    slots: dict[int, AdaptiveSteps] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for knob, low in (("S", 1), ("k", 1), ("N", 2), ("warmup", 0), ("interval", 1)):
            check_range(self.name, knob, getattr(self, knob), low)
        check_range(self.name, "alpha", self.alpha, 0.0, 1.0)
        self.slots = {}
        self.draft = DraftShape(depth=self._slot(1).steps, width=self.k)

    def draft_tokens(self, depth: int) -> int:
        """N(S) = 1 + round(S·(N − 1)/S_knob): tokens verified per request at depth S (a chain,
        k = 1, verifies its S drafts: S + 1)."""
        if self.k == 1:
            return depth + 1
        return 1 + round(depth * (self.N - 1) / self.S)

    def _slot(self, batch_size: int) -> AdaptiveSteps:
        key = bucket_key(batch_size)
        if key not in self.slots:
            candidates, down = BUCKET_STEPS[key]
            self.slots[key] = AdaptiveSteps(
                candidates, self.S, self.alpha, self.warmup, self.interval, down_hysteresis=down
            )
        return self.slots[key]

    def select(self, lattices: LatticeBatch, context: StepContext) -> Selection:
        depth = min(self._slot(lattices.batch_size).steps, context.draft.depth)
        tokens = self.draft_tokens(depth)
        self.draft = DraftShape(depth=self._slot(lattices.batch_size).steps, width=self.k)
        if self.k == 1:  # SGLang's own adaptive steps: a top-1 chain, replayed from the spine
            return static_chain(lattices, context, depth, budget=lattices.batch_size * depth)
        require_confidences(self.name, lattices)
        return static_tree(lattices, context, tokens, budget=lattices.batch_size * (tokens - 1))

    def observe(self, outcome: Outcome) -> None:
        accepted = outcome.accepted_depth
        if len(accepted) == 0:
            return
        steps = self._slot(len(accepted)).update(float(accepted.mean()))
        self.draft = DraftShape(depth=steps, width=self.k)

    def sglang_flags(self) -> dict[str, object]:
        depth = self.draft.depth
        if depth == 0:
            return {}
        return static_flags(depth, self.k, self.draft_tokens(depth))
