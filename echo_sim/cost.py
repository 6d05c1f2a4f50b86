"""Step-time model (COST_MODEL.md): the simulator's clock.

CONTRACT (fixed; the engine and the policies build against it; the cost work fills in the bodies):

    @dataclass(frozen=True) class StepShape:
        batch_size: int        decoding requests verified this step (0: a prefill-only step)
        verify_tokens: int     V = roots + selected draft nodes + bucket padding
        kv_tokens: int         Σ_r KV_r over the decoding requests (tokens already cached)
        attention_pairs: int   Σ_r V_r · (KV_r + V_r): exact attention work of the tree tokens
        draft_depth: int       levels drafted this step (0 = no drafting)
        draft_width: int       k per level (1 = chain)
        prefill_tokens: int = 0     prompt tokens of the prefill chunk scheduled in this step
        prefill_context: int = 0    tokens already cached for the prefilling request(s)
        eager: bool = False         the verify shape is not a captured graph

    class CostModel:
        source: str                      "preset:h200/llama-3.1-8b" or "calibration:<path>"
        graph_buckets: tuple[int, ...]   captured verify-token buckets (sorted)
        def step_time(self, shape: StepShape) -> float                       seconds
        def components(self, shape: StepShape) -> dict[str, float]           prefill/draft/verify/overhead
        def verify_time(self, verify_tokens, batch_size: int, kv_tokens: int, eager: bool = False)
            -> np.ndarray   vectorised over an array of candidate V (what echo's goodput budget scans);
                            includes the per-step overhead; attention pairs approximated by spreading V
                            evenly over the batch
        def draft_time(self, batch_size: int, depth: int, width: int) -> float
        def graph_bucket(self, verify_tokens: int) -> int | None   smallest bucket >= V, None above all

    def load_cost_model(hardware: str = "h200", model: str = "llama-3.1-8b",
                        calibration: str | Path | None = None) -> CostModel
    class CostModelError(ValueError)   unknown preset (lists known ones), bad/NaN calibration file
"""
