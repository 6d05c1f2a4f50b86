"""`goodput`: SmartSpec/TurboSpec (arXiv 2406.14066): one chain length per step for the whole batch,
the one that maximises expected accepted tokens per second under the cost model.

Model: each chain draft is accepted with probability α independently, so a chain of length k
commits E[k] = 1 + α + … + α^k = (1 − α^(k+1)) / (1 − α) tokens per request (bonus included).
For the step's batch size bs and KV tokens Σ KV:

    goodput(k) = bs · E[k] / (T_draft(bs, k, width 1) + T_verify(bucket(bs·(1 + k)), bs, Σ KV) + T_prefill)
    k* = argmax over k in 0 … min(k_max, trace depth S) (k = 0 is autoregressive: no draft cost,
    E = 1; ties -> smaller k); T_prefill is the step's prefill chunk, the same term echo's budget has

α is estimated online from the verified chains as a censored geometric rate, smoothed per step:

    acc ← (1 − β)·acc + β·Σ_r a_r / bs          a_r accepted drafts of request r
    try ← (1 − β)·try + β·Σ_r (a_r + [a_r < c_r]) / bs   c_r the chain it verified (a miss is a trial)
    α = acc / try                                starting from α₀ (acc = α₀, try = 1)

Chains are replayed from the spine (accepted = min(spine_run, chain)). k* is chosen at select()
from this step's batch; the draft for the next step is k* long, so the chain verified is
min(k*, drafted depth). While k* = 0 nothing is observed and α stays where it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from echo_sim.policies.base import DraftShape, Outcome, Selection, StepContext
from echo_sim.policies.common import step_seconds
from echo_sim.policies.knobs import KnobbedPolicy, check_range
from echo_sim.policies.static import static_chain
from echo_sim.trees import LatticeBatch


def expected_tokens(alpha: float, lengths: np.ndarray) -> np.ndarray:
    """float [len(lengths)]: E[k] = Σ_{i=0..k} α^i, committed tokens per request for chain length k."""
    return np.cumsum(alpha ** np.arange(int(lengths.max()) + 1))[lengths]


def chain_goodput(cost, alpha: float, k_max: int, batch_size: int, kv_tokens: int,
                  prefill_seconds: float = 0.0) -> np.ndarray:
    """float [k_max + 1]: expected committed tokens per second for chain lengths 0 … k_max, the
    step's prefill chunk (prefill_seconds) counted in every candidate's time."""
    lengths = np.arange(k_max + 1)
    executed, eager = cost.executed_shape(batch_size * (1 + lengths), batch_size)
    seconds = step_seconds(cost, executed, eager, batch_size, kv_tokens) + prefill_seconds
    seconds += np.array([0.0, *cost.draft_times(batch_size, k_max, 1, kv_tokens)[0]])  # draft_time(bs, k, 1) by k
    return batch_size * expected_tokens(alpha, lengths) / seconds


@dataclass
class GoodputPolicy(KnobbedPolicy):
    """Batch-wide chain length k* = argmax goodput(k) (formula in the module docstring)."""

    name: ClassVar[str] = "goodput"
    note: ClassVar[str] = "per-step goodput-optimal chain length is not an SGLang option"
    k_max: int = 8
    beta: float = 0.2
    alpha0: float = 0.6
    draft: DraftShape = field(init=False)
    accepted_ema: float = field(init=False, repr=False)
    trials_ema: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        check_range(self.name, "k_max", self.k_max, 1)
        check_range(self.name, "beta", self.beta, 0.0, 1.0)
        check_range(self.name, "alpha0", self.alpha0, 0.0, 1.0)
        self.accepted_ema, self.trials_ema = self.alpha0, 1.0
        self.draft = DraftShape(depth=self.k_max, width=1)

    @property
    def alpha(self) -> float:
        """Current estimate of the per-draft acceptance rate (capped below 1 for the formula)."""
        return min(self.accepted_ema / self.trials_ema, 0.999) if self.trials_ema > 0 else 0.0

    def best_length(self, context: StepContext) -> int:
        """k* over 0 … min(k_max, the trace's depth): like every tree policy here, no chain longer
        than the lattices are deep (chains replay the spine, which has no such limit)."""
        kv_tokens = int(np.sum(context.kv_lens))
        k_max = min(self.k_max, context.trace_depth) if context.trace_depth > 0 else self.k_max
        rates = chain_goodput(context.cost, self.alpha, k_max, context.batch_size, kv_tokens,
                              context.prefill_seconds)
        return int(np.argmax(rates))

    def select(self, lattices: LatticeBatch, context: StepContext) -> Selection:
        length = self.best_length(context) if lattices.batch_size else 0
        self.draft = DraftShape(depth=length, width=1)
        return static_chain(lattices, context, length, budget=lattices.batch_size * length)

    def observe(self, outcome: Outcome) -> None:
        chain = outcome.selection.chain
        if chain is None or not np.any(chain > 0):
            return
        verified = chain > 0
        accepted = outcome.accepted_depth[verified].astype(np.float64)
        misses = accepted < chain[verified]
        rows = int(verified.sum())
        self.accepted_ema = (1 - self.beta) * self.accepted_ema + self.beta * accepted.sum() / rows
        trials = (accepted.sum() + misses.sum()) / rows
        self.trials_ema = (1 - self.beta) * self.trials_ema + self.beta * trials
