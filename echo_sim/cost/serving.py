"""Serving-engine knobs of the step-time model: choices of the engine being simulated that move
the ranking of policies at high load. Each is recorded in every result (`CostModel.serving_knobs`).

    cost            "fitted" (default where echo_sim/presets/fitted/<hardware>.json exists) or
                    "roofline"; a calibration file supersedes both
    prefill_mode    "separate" (default): a prefill chunk runs as its own eagerly launched forward
                    before the decode batch (SGLang's EAGLE path: speculative decoding does not mix
                    prefill into verify batches); "mixed": the chunk joins the verify forward
                    (chunked prefill in the decode batch, vLLM / SGLang without speculation): one
                    forward over V + P tokens, eager (mixed shapes are not captured), logits for V
                    tokens + 1, plus the draft's forward over the chunk without its own launches
    verify_graphs   "token-buckets" (default) or "per-batch-size" with N tokens per request
                    (graph_tokens, default 16): echo_sim.cost.graphs
    moe_routing     "uniform" (default) or "gini:G": echo_sim.cost.routing
    draft level 1   always the draft extend over the tokens committed since the draft last ran
                    (Σ_r 1 + accepted_r of the previous step, plus catch-up after steps without drafting), not bs
"""

from __future__ import annotations

from dataclasses import dataclass

from echo_sim.cost.graphs import DEFAULT_TOKENS_PER_REQUEST, VERIFY_GRAPHS
from echo_sim.cost.presets import CostModelError
from echo_sim.cost.routing import parse_routing

COST_MODES = ("fitted", "roofline")
PREFILL_MODES = ("separate", "mixed")


@dataclass(frozen=True)
class ServingKnobs:
    prefill_mode: str = "separate"
    verify_graphs: str = "token-buckets"
    graph_tokens: int = DEFAULT_TOKENS_PER_REQUEST
    moe_routing: str = "uniform"

    def __post_init__(self):
        if self.prefill_mode not in PREFILL_MODES:
            raise CostModelError(f"prefill_mode {self.prefill_mode!r}; known: {', '.join(PREFILL_MODES)}")
        if self.verify_graphs not in VERIFY_GRAPHS:
            raise CostModelError(f"verify_graphs {self.verify_graphs!r}; known: {', '.join(VERIFY_GRAPHS)}")
        if isinstance(self.graph_tokens, bool) or not isinstance(self.graph_tokens, int) or self.graph_tokens < 1:
            raise CostModelError(f"graph_tokens {self.graph_tokens!r} must be an integer >= 1")
        parse_routing(self.moe_routing)

    @property
    def routing(self):
        return parse_routing(self.moe_routing)

    def record(self) -> dict:
        graphs = self.verify_graphs if self.verify_graphs == "token-buckets" else f"per-batch-size:N={self.graph_tokens}"
        return {"prefill_mode": self.prefill_mode, "verify_graphs": graphs, "moe_routing": self.routing.label,
                "draft_extend": "committed tokens"}


def check_cost_mode(cost: str | None) -> None:
    if cost is not None and cost not in COST_MODES:
        raise CostModelError(f"cost {cost!r}; known: {', '.join(COST_MODES)}")
