"""Which verify shapes run as a captured CUDA graph: THE graph-bucket rule (serving knob `verify_graphs`).

Every policy and the cost model ask `GraphCapture.executed` (through `CostModel.executed_shape`):

- `token-buckets` (default): graphs captured per total token count (the hardware preset's 83
  buckets 1…8192, or a calibration's). V runs as the smallest bucket >= V (padding costs like real
  tokens); above the largest bucket it runs eagerly as V tokens.
- `per-batch-size`: what SGLang captures for EAGLE: one verify graph per captured batch size b,
  of b·N tokens (N = `--speculative-num-draft-tokens`, fixed). A step of bs requests runs the graph
  of the smallest captured b >= bs: V <= b runs b tokens (a decode step without drafts), V <= b·N
  runs b·N tokens; anything larger, or bs above the largest captured b, runs eagerly. (A ragged
  tree whose largest request exceeds N tokens would also run eagerly in SGLang; the step's total
  is all this rule sees.)

bucketing=False (a policy that does not pad): V runs as is, eagerly unless V equals the graph shape.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from echo_sim.cost.memo import remembered
from echo_sim.cost.presets import CostModelError

VERIFY_GRAPHS = ("token-buckets", "per-batch-size")
# SGLang's default CUDA-graph batch sizes (cuda_graph_runner / server_args: [1, 2, 4, 8, 12] and
# multiples of 8 from 16, then multiples of 16 past 256) up to --cuda-graph-max-bs: 256 at TP < 4,
# 512 at TP >= 4 on 80-160 GB GPUs.
SGLANG_BATCH_SIZES = (1, 2, 4, 8, 12, *range(16, 257, 8), *range(272, 513, 16))
DEFAULT_TOKENS_PER_REQUEST = 16  # N: SGLang's EAGLE verify graphs in the presets' note (256 x 16 = 4096)
ONE_RUNS_KEPT = 1 << 16  # (V, bs, bucketing) answers GraphCapture.executed_one remembers


def sglang_batch_sizes(tp: int) -> tuple[int, ...]:
    top = 512 if tp >= 4 else 256
    return tuple(b for b in SGLANG_BATCH_SIZES if b <= top)


@dataclass(frozen=True)
class GraphCapture:
    """The captured verify shapes. mode 'token-buckets' uses token_buckets; 'per-batch-size' uses
    batch_sizes x tokens_per_request. No buckets / batch sizes: every step runs eagerly."""

    mode: str
    token_buckets: tuple[int, ...] = ()
    batch_sizes: tuple[int, ...] = ()
    tokens_per_request: int = DEFAULT_TOKENS_PER_REQUEST
    # executed_one's answers: the same few shapes are asked every step (the policy's fit, the step's price)
    _one_runs: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.mode not in VERIFY_GRAPHS:
            raise CostModelError(f"verify_graphs {self.mode!r}; known: {', '.join(VERIFY_GRAPHS)}")
        if self.tokens_per_request < 1:
            raise CostModelError(f"graph tokens per request {self.tokens_per_request} must be >= 1")

    @property
    def token_sizes(self) -> tuple[int, ...]:
        """Token counts of the captured graphs (sorted)."""
        if self.mode == "token-buckets":
            return self.token_buckets
        return tuple(sorted({b for b in self.batch_sizes} | {b * self.tokens_per_request for b in self.batch_sizes}))

    def executed(self, verify_tokens, batch_size: int, bucketing: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """(tokens the forward runs int64, eager bool) for candidate V values. Shape: [n] -> [n], [n].
        V = 0 (an empty step) runs nothing and is not eager."""
        one = isinstance(verify_tokens, np.ndarray) and verify_tokens.shape == (1,) and verify_tokens.dtype.kind in "iu"
        v = verify_tokens if one else np.atleast_1d(np.asarray(verify_tokens, dtype=np.int64))
        if v.shape == (1,):  # most callers ask about one V: the same rule in plain ints (tested equal)
            tokens, eager = self.executed_one(int(v[0]), batch_size, bucketing)
            return np.array([tokens], dtype=np.int64), np.array([eager])
        graph = self._graph_tokens(v, batch_size)  # 0 where no graph holds V
        if v.min(initial=1) > 0:  # no empty step (verify_time's candidates): fits = graph > 0
            if bucketing:
                return np.where(graph > 0, graph, v), graph == 0
            return v.copy(), (graph == 0) | (graph != v)
        graph = np.where(v == 0, 0, graph)
        fits = (graph > 0) | (v == 0)
        if bucketing:
            return np.where(graph > 0, graph, v), ~fits
        return v.copy(), ~(fits & ((graph == v) | (v == 0)))

    def executed_one(self, v: int, batch_size: int, bucketing: bool = True) -> tuple[int, bool]:
        """executed() of one V, without arrays: (tokens the forward runs, eager); remembered."""
        key = (v, batch_size, bucketing)
        return self._one_runs.get(key) or remembered(self._one_runs, key,  # a hit without building the lambda
                                                     lambda: self._executed_one(v, batch_size, bucketing),
                                                     ONE_RUNS_KEPT)

    def _executed_one(self, v: int, batch_size: int, bucketing: bool) -> tuple[int, bool]:
        graph = 0 if v == 0 else self._graph_tokens_one(v, batch_size)
        fits = graph > 0 or v == 0
        if bucketing:
            return (graph if graph > 0 else v), not fits
        return v, not (fits and (graph == v or v == 0))

    def _graph_tokens_one(self, v: int, batch_size: int) -> int:
        """_graph_tokens of one V (0 where no graph holds it)."""
        if self.mode == "token-buckets":
            slot = bisect.bisect_left(self.token_buckets, v)
            return self.token_buckets[slot] if slot < len(self.token_buckets) else 0
        b = next((b for b in self.batch_sizes if b >= batch_size), None)
        if b is None:
            return 0
        return b if v <= b else (b * self.tokens_per_request if v <= b * self.tokens_per_request else 0)

    @cached_property
    def _bucket_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(token buckets int64, the same with a trailing 0: the graph of a slot past the largest)."""
        buckets = np.asarray(self.token_buckets, dtype=np.int64)
        return buckets, np.append(buckets, 0)

    def _graph_tokens(self, v: np.ndarray, batch_size: int) -> np.ndarray:
        if self.mode == "token-buckets":
            buckets, graph_of_slot = self._bucket_arrays
            return graph_of_slot[np.searchsorted(buckets, v)]
        sizes = [b for b in self.batch_sizes if b >= batch_size]
        if not sizes:
            return np.zeros_like(v)
        b = sizes[0]
        return np.where(v <= b, b, np.where(v <= b * self.tokens_per_request, b * self.tokens_per_request, 0))


class TokenBucketGraphs:
    """Mixin for hand-written cost models (tests, benchmarks) with a `graph_buckets` attribute and
    a `draft_time`: the same graph rule as CostModel.executed_shape / executed_one, over token
    buckets, and CostModel.draft_times from their draft_time."""

    def executed_shape(self, verify_tokens, batch_size: int, bucketing: bool = True):
        return GraphCapture("token-buckets", tuple(self.graph_buckets)).executed(verify_tokens, batch_size, bucketing)

    def executed_one(self, verify_tokens: int, batch_size: int, bucketing: bool = True) -> tuple[int, bool]:
        return GraphCapture("token-buckets", tuple(self.graph_buckets)).executed_one(verify_tokens, batch_size,
                                                                                     bucketing)

    def draft_times(self, batch_size: int, depth: int, width: int, kv_tokens: int = 0) -> list[list[float]]:
        return [[float(self.draft_time(batch_size, d, w, kv_tokens=kv_tokens)) for d in range(1, depth + 1)]
                for w in range(1, width + 1)]
