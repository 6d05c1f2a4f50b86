"""Calibration of draft confidence: cumulative score -> ĉ, the probability that a node is on-path.

Raw cumulative scores are over-confident at depth; echo ranks nodes by ĉ instead. The curve is
binned over the cumulative score with a prior (POLICIES.md, echo step 2):

    bin b: n_b verified nodes, h_b of them accepted (a verified node of a prefix-closed selection
           is accepted iff it is on-path)
    posterior_b = (h_b + m · centre_b) / (n_b + m)     prior: the raw score itself, weight m
    values = weighted isotonic (non-decreasing) fit of posterior_b, weights n_b + m
    ĉ(score) = linear interpolation of values between bin centres (monotone in score)

ĉ is non-increasing along every path (echo._confidence says why). The bins are
log-spaced below 0.05 where deep nodes live, 0.05 wide above; `score_bins` is the one binning
rule, also behind trace-info's coarser calibration table (traces.replay.calibration_table).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BIN_EDGES = np.concatenate(([0.0], np.geomspace(1e-4, 0.05, 8)[:-1], np.linspace(0.05, 1.0, 20)))
BIN_CENTRES = 0.5 * (BIN_EDGES[:-1] + BIN_EDGES[1:])
NUM_BINS = len(BIN_CENTRES)


class GridSearch:
    """np.searchsorted(points, x, side="right") (how many points are <= x) for x in [0, 1], for
    fixed increasing points in [0, 1], by table lookup: a uniform grid of [0, 1] whose cells are
    narrower than the smallest gap between points holds at most one point per cell, so a value's
    count is its cell corner's count plus one comparison. The cell width is a power of two, so
    x · cells is exact (float32 or float64) and its floor is the true cell. Several times cheaper
    than searchsorted's binary search on the batch's ~20k scores (tests/test_speed_policy.py)."""

    def __init__(self, points: np.ndarray):
        points = np.asarray(points, dtype=np.float64)
        if not (len(points) >= 2 and points[0] >= 0.0 and points[-1] <= 1.0 and np.all(np.diff(points) > 0)):
            raise ValueError("GridSearch: points must increase within [0, 1]")
        self.cells = 2.0 ** np.ceil(np.log2(2.0 / np.diff(points).min()))
        corners = np.arange(int(self.cells) + 1) / self.cells
        self.first = np.searchsorted(points, corners, side="right")  # intp: take() indexes without a cast
        self.next = np.append(points, np.inf)  # the point after a count's last one

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """int [n]: the count for each x, every x within [0, 1] (callers check)."""
        count = self.first.take((x * self.cells).astype(np.intp))  # take: cheaper than [] indexing
        return count + (x >= self.next.take(count))


def within_unit(x: np.ndarray) -> bool:
    """Every value in [0, 1] (False for NaN): where GridSearch answers."""
    return bool(len(x)) and bool(x.min() >= 0.0) and bool(x.max() <= 1.0)


GRID_MIN = 1024  # below this many scores np.interp is the cheaper of the two (measured crossover ~800)
_EDGE_SEARCH = GridSearch(BIN_EDGES)
_CENTRE_SEARCH = GridSearch(BIN_CENTRES)


def score_bins(score: np.ndarray, edges: np.ndarray = BIN_EDGES) -> np.ndarray:
    """intp [n]: bin of each cumulative score over increasing `edges` (bins are left-closed; the
    last edge belongs to the last bin): the one binning of scores, for echo's calibration curve
    and trace-info's calibration table alike. score_bins_reference is the rule (searchsorted);
    echo's own edges take GridSearch on scores in [0, 1] (edge 0 is 0: no score below bin 0)."""
    score = np.asarray(score, dtype=np.float64)
    if edges is not BIN_EDGES or not within_unit(score):
        return score_bins_reference(score, edges)
    return np.minimum(_EDGE_SEARCH(score) - 1, NUM_BINS - 1)


def score_bins_reference(score: np.ndarray, edges: np.ndarray = BIN_EDGES) -> np.ndarray:
    bins = np.searchsorted(edges, np.asarray(score, dtype=np.float64), side="right") - 1
    return np.clip(bins, 0, len(edges) - 2)


SEGMENT_CENTRES = np.concatenate((BIN_CENTRES[:1], BIN_CENTRES))  # x_j per GridSearch count (curve_segments)
SEGMENT_CENTRES.flags.writeable = False


def score_segments(score: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(count intp [n], offset float64 [n]): what interp_centres's grid path computes from the
    scores alone, whatever the curve: each score's GridSearch count over the centres and its
    distance x − x_j from that segment's start. None for scores outside [0, 1] or NaN (no grid
    path). Precomputed per trace node by the reader (LatticeBatch.score_segments)."""
    x = np.asarray(score, dtype=np.float64)
    if not within_unit(x):
        return None
    count = _CENTRE_SEARCH(x)
    return count, x - SEGMENT_CENTRES.take(count)


def interp_centres(score: np.ndarray, values: np.ndarray,
                   segments: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                   scored: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """float64 [n]: np.interp(score, BIN_CENTRES, values), bit for bit, at a fraction of its cost.

    np.interp computes slope_j · (x − x_j) + y_j on the segment x_j <= x < x_{j+1} (slope_j =
    (y_{j+1} − y_j) / (x_{j+1} − x_j)), y_0 below the first point, y_last from the last on.
    Here the same two roundings per segment, the segment by GridSearch, and below the first and
    from the last point a zero slope: 0 · (x − x_j) + y = y. `segments`: curve_segments(values),
    when the caller keeps them (computed here otherwise). Scores outside [0, 1] or NaN, and small
    batches (where its dozen numpy calls cost more than np.interp's search), take np.interp itself.
    `scored`: score_segments(score), when the caller has it (the same floats, two numpy passes
    fewer than the grid search: only the curve's slope and value are read per node)."""
    if scored is not None and len(score) >= GRID_MIN:
        count, offset = scored
        _, slope, value = curve_segments(values) if segments is None else segments
        out = offset * slope.take(count)  # = (x − x_j) · slope_j, as out *= slope below
        out += value.take(count)
        return out
    x = np.asarray(score, dtype=np.float64)  # once: mixed float32/float64 operations are slower
    if len(x) < GRID_MIN or not within_unit(x):
        return np.interp(x, BIN_CENTRES, values)
    centre, slope, value = curve_segments(values) if segments is None else segments
    count = _CENTRE_SEARCH(x)  # 0 below the first centre, j + 1 on segment j
    out = x - centre.take(count)
    out *= slope.take(count)
    out += value.take(count)
    return out


def curve_segments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x_j, slope_j, y_j) per GridSearch count over the centres (interp_centres): count 0 is
    "below the first centre" (slope 0, y_0), count j + 1 the segment from centre j, the last
    count "from the last centre on" (slope 0); np.interp's slopes, elementwise alike."""
    slopes = np.diff(values) / np.diff(BIN_CENTRES)
    return SEGMENT_CENTRES, np.concatenate(([0.0], slopes, [0.0])), np.concatenate((values[:1], values))


def isotonic_non_decreasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """float [len(values)]: weighted least-squares non-decreasing fit (pool adjacent violators)."""
    values, weights = np.asarray(values, float), np.asarray(weights, float)
    drops = np.flatnonzero(values[1:] < values[:-1])  # where a merge can first happen (NaN never merges)
    if len(drops) == 0:
        return values.copy()
    # up to the first drop every block is one value (nothing merges there): start the pass after it
    start = int(drops[0]) + 1
    means, masses, sizes = values[:start].tolist(), weights[:start].tolist(), [1] * start
    # plain floats: the same IEEE arithmetic as numpy scalars, several times faster per step. The
    # newest block (mean, mass, size) stays in locals; it merges into the block below while that
    # one's mean is larger: (m_below·w_below + m·w) / (w_below + w), in that order
    for mean, mass in zip(values[start:].tolist(), weights[start:].tolist()):
        size = 1
        while means and means[-1] > mean:
            below_mean, below_mass = means.pop(), masses.pop()
            total = below_mass + mass
            mean = (below_mean * below_mass + mean * mass) / total
            mass, size = total, sizes.pop() + size
        means.append(mean), masses.append(mass), sizes.append(size)
    return np.repeat(means, sizes)


@dataclass
class CalibrationCurve:
    """Online, monotone score -> ĉ curve (formula in the module docstring)."""

    prior_weight: float = 10.0
    decay: float = 0.0  # per observation, old counts are weighted (1 - decay): the curve follows drift
    nodes: np.ndarray = field(default_factory=lambda: np.zeros(NUM_BINS))
    hits: np.ndarray = field(default_factory=lambda: np.zeros(NUM_BINS))
    _values: np.ndarray | None = field(default=None, repr=False)
    _segments: tuple | None = field(default=None, repr=False)

    def observe(self, score: np.ndarray, accepted: np.ndarray) -> None:
        """Count verified nodes (their scores) and which of them were accepted, after forgetting
        a `decay` share of the old counts."""
        if self.decay:
            self.nodes *= 1.0 - self.decay
            self.hits *= 1.0 - self.decay
        bins = score_bins(score)
        self.nodes += np.bincount(bins, minlength=NUM_BINS)
        self.hits += np.bincount(bins, weights=np.asarray(accepted, dtype=np.float64), minlength=NUM_BINS)
        self._values = None

    @property
    def values(self) -> np.ndarray:
        """float [NUM_BINS]: the fitted ĉ at each bin centre."""
        if self._values is None:
            weight = self.nodes + self.prior_weight
            posterior = (self.hits + self.prior_weight * BIN_CENTRES) / weight
            self._values = isotonic_non_decreasing(posterior, weight)
            self._segments = None  # curve_segments of the new values, when a large batch asks (__call__)
        return self._values

    def __call__(self, score: np.ndarray, scored=None) -> np.ndarray:
        """float64 [n]: ĉ of each cumulative score (np.interp over the bin centres: interp_centres).
        `scored`: a callable giving score_segments(score) (LatticeBatch.score_segments), called
        only where the grid path runs."""
        values = self.values  # fits the curve when stale
        if len(score) < GRID_MIN:
            return interp_centres(score, values)
        if self._segments is None:  # only interp_centres's grid path reads them
            self._segments = curve_segments(values)
        return interp_centres(score, values, self._segments, None if scored is None else scored())
