"""Calibration of draft confidence: cumulative score -> ĉ, the probability that a node is on-path.

Raw cumulative scores are over-confident at depth; echo ranks nodes by ĉ instead. The curve is
binned over the cumulative score with a prior (POLICIES.md, echo step 2):

    bin b: n_b verified nodes, h_b of them accepted (a verified node of a prefix-closed selection
           is accepted iff it is on-path)
    posterior_b = (h_b + m · centre_b) / (n_b + m)     prior: the raw score itself, weight m
    values = weighted isotonic (non-decreasing) fit of posterior_b, weights n_b + m
    ĉ(score) = linear interpolation of values between bin centres (monotone in score)

echo then forces ĉ non-increasing along every path with trees.running_min. The bins are
log-spaced below 0.05 where deep nodes live, 0.05 wide above; `score_bins` is the one binning
rule, also behind trace-info's coarser calibration table (traces.replay.calibration_table).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

BIN_EDGES = np.concatenate(([0.0], np.geomspace(1e-4, 0.05, 8)[:-1], np.linspace(0.05, 1.0, 20)))
BIN_CENTRES = 0.5 * (BIN_EDGES[:-1] + BIN_EDGES[1:])
NUM_BINS = len(BIN_CENTRES)


def score_bins(score: np.ndarray, edges: np.ndarray = BIN_EDGES) -> np.ndarray:
    """int64 [n]: bin of each cumulative score over increasing `edges` (bins are left-closed; the
    last edge belongs to the last bin): the one binning of scores, for echo's calibration curve
    and trace-info's calibration table alike."""
    bins = np.searchsorted(edges, np.asarray(score, dtype=np.float64), side="right") - 1
    return np.clip(bins, 0, len(edges) - 2)


def isotonic_non_decreasing(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """float [len(values)]: weighted least-squares non-decreasing fit (pool adjacent violators)."""
    means, masses, sizes = [], [], []
    # plain floats: the same IEEE arithmetic as numpy scalars, several times faster per step
    for value, weight in zip(np.asarray(values, float).tolist(), np.asarray(weights, float).tolist()):
        means.append(value), masses.append(weight), sizes.append(1)
        while len(means) > 1 and means[-2] > means[-1]:
            mass = masses[-2] + masses[-1]
            mean = (means[-2] * masses[-2] + means[-1] * masses[-1]) / mass
            size = sizes[-2] + sizes[-1]
            del means[-1], masses[-1], sizes[-1]
            means[-1], masses[-1], sizes[-1] = mean, mass, size
    return np.repeat(means, sizes)


@dataclass
class CalibrationCurve:
    """Online, monotone score -> ĉ curve (formula in the module docstring)."""

    prior_weight: float = 10.0
    decay: float = 0.0  # per observation, old counts are weighted (1 - decay): the curve follows drift
    nodes: np.ndarray = field(default_factory=lambda: np.zeros(NUM_BINS))
    hits: np.ndarray = field(default_factory=lambda: np.zeros(NUM_BINS))
    _values: np.ndarray | None = field(default=None, repr=False)

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
        return self._values

    def __call__(self, score: np.ndarray) -> np.ndarray:
        """float64 [n]: ĉ of each cumulative score."""
        return np.interp(score, BIN_CENTRES, self.values)
