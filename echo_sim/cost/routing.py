"""How many distinct experts V tokens hit: the MoE term of the step-time model (serving knob `moe_routing`).

`uniform` (the default): every token picks its e of E experts independently and uniformly,
U(V) = E·(1 − (1 − e/E)^V). Real routers concentrate load on some experts, so fewer distinct
experts are hit at moderate V and a bigger tree costs less than uniform routing says.

`gini:G`: expert j's share of the routed tokens follows a power law p_j ∝ j^(−s), with s chosen so
the Gini coefficient of the per-expert load is G; a token hits expert j with probability
q_j = min(1, e·p_j) and U(V) = Σ_j 1 − (1 − q_j)^V (G = 0 is uniform). Published values: Ma et
al., "Diagnosing Overhead in Dispatch Operations" (DODOCO, arXiv:2605.20982, 2026) measure the
routing Gini of real text on five MoE checkpoints: 0.105 (MHA, DeepSeek-MoE-16B) to above 0.24
(MLA / GDN), GQA (Qwen3-30B-A3B) in between; no figure for Qwen3-235B-A22B itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from echo_sim.cost.presets import CostModelError

MAX_GINI = 0.9


def gini(shares: np.ndarray) -> float:
    """Gini coefficient of a load vector (0: even, → 1: one expert takes everything)."""
    x = np.sort(np.asarray(shares, dtype=float))
    n = len(x)
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


@lru_cache(maxsize=64)
def _hit_probabilities(num_experts: int, experts_per_token: int, target_gini: float) -> np.ndarray:
    """q_j for the power law whose load Gini is target_gini (bisection on the exponent)."""
    rank = np.arange(1, num_experts + 1, dtype=float)
    low, high = 0.0, 20.0
    for _ in range(80):
        s = (low + high) / 2
        low, high = (s, high) if gini(rank ** -s) < target_gini else (low, s)
    share = rank ** -((low + high) / 2)
    return np.minimum(1.0, experts_per_token * share / share.sum())


@dataclass(frozen=True)
class ExpertRouting:
    """Expert routing concentration: gini = 0 is independent uniform routing."""

    gini: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.gini <= MAX_GINI:
            raise CostModelError(f"moe_routing gini {self.gini!r} must be in [0, {MAX_GINI}]")

    @property
    def label(self) -> str:
        return "uniform" if self.gini == 0 else f"gini:{self.gini:g}"

    def distinct_experts(self, tokens, num_experts: int, experts_per_token: int) -> np.ndarray:
        """Expected distinct experts hit by each token count. Shape: tokens [n] -> [n]."""
        tokens = np.asarray(tokens, dtype=float)
        if self.gini == 0:
            return num_experts * (1.0 - (1.0 - experts_per_token / num_experts) ** tokens)
        q = _hit_probabilities(num_experts, experts_per_token, self.gini)
        return (1.0 - (1.0 - q) ** tokens[..., None]).sum(axis=-1)


UNIFORM = ExpertRouting()


def parse_routing(text: str) -> ExpertRouting:
    """`uniform` or `gini:G` -> ExpertRouting; CostModelError naming the value otherwise."""
    if text == "uniform":
        return UNIFORM
    if text.startswith("gini:"):
        try:
            return ExpertRouting(float(text[5:]))
        except ValueError:
            pass
    raise CostModelError(f"moe_routing {text!r}: expected 'uniform' or 'gini:G' with 0 <= G <= {MAX_GINI}")
