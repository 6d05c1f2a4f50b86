"""echo's elastic draft shape: which width k', depth S' (or no drafting) the next step drafts.

Prediction (POLICIES.md echo step 0). For every width k' and level l the policy keeps an EMA of
the level's *ĉ profile*: rank i -> the mean over requests of the i-th largest calibrated ĉ among
the level's drafted nodes (k' values at level 1, k'² below; 0 where a node was not drafted or not
eligible). A shape (k', S') offers each request the merged profile of its levels 1…S'; verifying
the m best of them per request is predicted to commit bs·(1 + Σ_{i<=m} p_i) tokens. Its time is

    T_draft(bs, S', k') + T_verify(bucket(bs·(1 + m))) + T_prefill      (prefill term switchable)

and the shape's rate is the best m's. No drafting commits bs tokens in T_verify(bs) + T_prefill.
The next shape is the best rate, kept unless another beats it by more than `hysteresis`.

Widths never drafted yet start from the widest's profile (its k'-best values per level: exact at
level 1, an estimate below). The full shape is drafted every `probe` steps, ungated, so its
statistics (and the calibration curve below τ) stay fresh. T_draft per depth uses one level-1 and
one full-depth draft time per width (levels 2…S cost alike: exact for calibrated fits, within the
attention term's level growth for the roofline). The predictor charges the ungated draft: with the
expand gate the real draft is cheaper, so the prediction is conservative for narrow shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from echo_sim.policies.base import DraftShape
from echo_sim.policies.common import step_seconds
from echo_sim.trees import LatticeBatch

NO_DRAFT = DraftShape(depth=0, width=1)


def uniform_levels(lattices: LatticeBatch) -> np.ndarray | None:
    """int [m]: the depth of each column when every lattice has the same m nodes at the same
    depths (a complete beam read), else None: then a level is a block of columns of the [bs, m]
    table, read without a pass over the batch per level."""
    bs, n = lattices.batch_size, lattices.num_nodes
    if bs == 0 or n % bs or not np.array_equal(lattices.offsets, np.arange(bs + 1) * (n // bs)):
        return None
    depth = lattices.depth.reshape(bs, n // bs)
    return depth[0] if np.array_equal(depth, np.broadcast_to(depth[0], depth.shape)) else None


def level_profile(lattices: LatticeBatch, confidence: np.ndarray, level: int, slots: int,
                  columns: np.ndarray | None = None) -> np.ndarray:
    """float [slots]: mean over requests of the i-th largest ĉ at `level` (0-padded per request).
    `columns`: uniform_levels(lattices), when the caller has it."""
    bs = lattices.batch_size
    block = np.flatnonzero(columns == level) if columns is not None else np.zeros(0, dtype=np.intp)
    if len(block) == slots and block[-1] - block[0] + 1 == slots:  # the level's columns, row by row
        table = confidence.reshape(bs, len(columns))[:, block[0]: block[-1] + 1]
        return -np.sort(-table, axis=1).mean(axis=0)
    index = np.flatnonzero(lattices.depth == level)
    values = confidence[index]
    if len(index) == bs * slots:  # a beam has at most `slots` per level: every request is complete
        table = values.reshape(bs, slots)
    else:
        rows = lattices.request_of_node()[index]
        order = np.lexsort((-values, rows))
        rows, values = rows[order], values[order]
        starts = np.searchsorted(rows, np.arange(bs))
        rank = np.arange(len(rows)) - starts[rows]
        table = np.zeros((bs, slots))
        keep = rank < slots
        table[rows[keep], rank[keep]] = values[keep]
    return -np.sort(-table, axis=1).mean(axis=0)


def draft_levels(cost, batch_size: int, kv_tokens: int, width: int, depth: int) -> tuple[float, np.ndarray]:
    """(level-1 seconds, seconds of one level 2…S for each width 1…k): T_draft(bs, S', k') is
    first + (S' − 1)·per_level[k' − 1] (levels 2…S cost alike; module docstring)."""
    grid = cost.draft_times(batch_size, max(depth, 1), width, kv_tokens)  # [w - 1][d - 1]: draft_time(bs, d, w)
    first = grid[0][0]
    if depth <= 1:
        return first, np.zeros(width)
    full = np.array([row[depth - 1] for row in grid])
    return first, (full - first) / (depth - 1)


def depth_rates(levels: list[np.ndarray], verify: np.ndarray, first: float, per_level: float,
                batch_size: int) -> list[float]:
    """The predicted rate of depths 1…len(levels) of one width (module docstring): depth d merges
    the profiles of levels 1…d, best first, and takes the best m. All depths in one 2-D pass
    (depth_gains, which depends on the profiles alone; depth_rates_reference, tested equal)."""
    return rates_of_gains(depth_gains(levels), verify, first, per_level, batch_size)


def depth_gains(levels: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(gains float [D, n + 1], beyond bool [D, n + 1]) of depth_rates: row d holds the levels <= d
    (the rest -inf, sorted last), so its cumulative sums over the first n_d columns are the merged
    profile's, summed in the same order; `beyond`: the columns past depth d's nodes."""
    sizes = np.cumsum([len(level) for level in levels])
    values = np.concatenate(levels)
    level_of = np.repeat(np.arange(len(levels)), [len(level) for level in levels])
    table = np.where(level_of[None, :] <= np.arange(len(levels))[:, None], values[None, :], -np.inf)
    ordered = np.sort(table, axis=1)[:, ::-1]
    gains = np.zeros((len(levels), len(values) + 1))
    np.cumsum(np.where(np.isfinite(ordered), ordered, 0.0), axis=1, out=gains[:, 1:])
    return gains, np.arange(len(values) + 1)[None, :] > sizes[:, None]


def rates_of_gains(depth_gains: tuple[np.ndarray, np.ndarray], verify: np.ndarray, first: float, per_level: float,
                   batch_size: int) -> list[float]:
    """depth_rates from its depth_gains: the step times of this step's batch and ΣKV."""
    gains, beyond = depth_gains
    seconds = (verify[: gains.shape[1]] + first) + (np.arange(len(gains)) * per_level)[:, None]
    rates = batch_size * (1 + gains) / seconds
    rates[beyond] = -np.inf
    return rates.max(axis=1).tolist()


def depth_rates_reference(levels: list[np.ndarray], verify: np.ndarray, first: float, per_level: float,
                          batch_size: int) -> list[float]:
    """depth_rates one depth at a time (the plain reading of the module docstring)."""
    out, merged = [], np.zeros(0)
    for depth, level in enumerate(levels, start=1):
        merged = np.sort(np.concatenate((merged, level)))[::-1]
        gains = np.concatenate(([0.0], np.cumsum(merged)))
        seconds = verify[: len(gains)] + first + (depth - 1) * per_level
        out.append(float(np.max(batch_size * (1 + gains) / seconds)))
    return out


@dataclass
class ShapeChooser:
    """Online per-(k', level) ĉ profiles and the rate-maximising next shape (module docstring)."""

    width: int
    depth: int
    beta: float = 0.1
    hysteresis: float = 0.03
    prefill_term: bool = True
    profiles: dict = field(default_factory=dict)  # (k', level) -> float [slots]; changed by observe (rates caches on it)
    current: DraftShape | None = None
    _draft_cache: dict = field(default_factory=dict, repr=False)
    _shape_cache: dict = field(default_factory=dict, repr=False)  # _verify_shapes
    _gains_cache: dict = field(default_factory=dict, repr=False)  # width -> _depth_gains, until observe

    @staticmethod
    def slots(width: int, level: int) -> int:
        return width if level == 1 else width * width

    def observe(self, lattices: LatticeBatch, confidence: np.ndarray, drafted: DraftShape) -> None:
        """Fold this step's ĉ profile of every drafted level into the EMA of its (k', level)."""
        if drafted.depth <= 0 or lattices.batch_size == 0:
            return
        columns = uniform_levels(lattices)
        self._gains_cache.clear()
        for level in range(1, min(drafted.depth, self.depth) + 1):
            key = (drafted.width, level)
            fresh = level_profile(lattices, confidence, level, self.slots(drafted.width, level), columns)
            old = self.profiles.get(key)
            self.profiles[key] = fresh if old is None else (1 - self.beta) * old + self.beta * fresh

    def _profile(self, width: int, level: int) -> np.ndarray | None:
        own = self.profiles.get((width, level))
        if own is not None:
            return own
        widest = self.profiles.get((self.width, level))
        return None if widest is None else widest[: self.slots(width, level)]

    def rates(self, batch_size: int, kv_tokens: int, prefill_seconds: float, cost, bucketing: bool
              ) -> dict[DraftShape, float]:
        """Predicted committed tokens per second of every shape with statistics, and of no drafting."""
        sunk = prefill_seconds if self.prefill_term else 0.0
        executed, eager = self._verify_shapes(cost, batch_size, bucketing)
        verify = step_seconds(cost, executed, eager, batch_size, kv_tokens) + sunk  # by nodes m per request
        rates = {NO_DRAFT: batch_size / verify[0]}
        first, per_level = self._draft_levels(cost, batch_size, kv_tokens)
        for width in range(1, self.width + 1):
            gains = self._depth_gains(width)
            if gains is not None:
                for depth, rate in enumerate(rates_of_gains(gains, verify, first, per_level[width - 1], batch_size),
                                             start=1):
                    rates[DraftShape(depth, width)] = rate
        return rates

    def _depth_gains(self, width: int) -> tuple[np.ndarray, np.ndarray] | None:
        """depth_gains of the width's known profiles (levels 1 … the first without statistics), None
        without any; remembered until the profiles change (observe)."""
        if width not in self._gains_cache:
            levels = [self._profile(width, level) for level in range(1, self.depth + 1)]
            known = next((i for i, level in enumerate(levels) if level is None), len(levels))
            self._gains_cache[width] = depth_gains(levels[:known]) if known else None
        return self._gains_cache[width]

    def _verify_shapes(self, cost, batch_size: int, bucketing: bool) -> tuple[np.ndarray, np.ndarray]:
        """The executed verify shape of bs·(1 + m) tokens for every m up to the full shape's nodes,
        per cost model, batch size and bucketing (they depend on nothing else)."""
        key = (id(cost), batch_size, bucketing)
        if key not in self._shape_cache:
            most = self.width + (self.depth - 1) * self.width * self.width  # nodes of the full shape
            self._shape_cache[key] = cost.executed_shape(batch_size * (1 + np.arange(most + 1)), batch_size, bucketing)
        return self._shape_cache[key]

    def _draft_levels(self, cost, batch_size: int, kv_tokens: int) -> tuple[float, np.ndarray]:
        """draft_levels, cached per cost model, batch size and ΣKV to 2 significant digits: the
        prediction needs no more, and the roofline is not cheap."""
        key = (id(cost), batch_size, float(f"{kv_tokens:.2g}"))
        if key not in self._draft_cache:
            self._draft_cache[key] = draft_levels(cost, batch_size, int(key[2]), self.width, self.depth)
        return self._draft_cache[key]

    def choose(self, rates: dict[DraftShape, float]) -> DraftShape:
        """The best shape, unless the current one is within `hysteresis` of it."""
        best = max(rates, key=lambda shape: (rates[shape], -shape.depth, -shape.width))
        if self.current in rates and rates[best] <= rates[self.current] * (1 + self.hysteresis):
            return self.current
        self.current = best
        return best
