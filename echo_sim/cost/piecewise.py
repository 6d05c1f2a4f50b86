"""Piecewise-linear curves through measured sizes: how a calibration keeps what it measured.

A forward's time is not linear in its token count on every machine (single-thread MKL on a CPU:
2 rows cost twice 1 row, 3 rows three times, 4 rows less than 3), so the calibrated cost model
interpolates between measured token counts instead of fitting a line through them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def hat_basis(x, knots) -> np.ndarray:
    """Weights of each knot in the piecewise-linear interpolation at x, continued linearly past
    either end (the first or last segment extended). Shape: x [n], knots [K] -> [n, K]."""
    x = np.atleast_1d(np.asarray(x, dtype=float))
    grid = np.asarray(knots, dtype=float)
    basis = np.zeros((x.size, grid.size))
    if grid.size == 1:
        basis[:, 0] = 1.0
        return basis
    segment = np.clip(np.searchsorted(grid, x, side="right") - 1, 0, grid.size - 2)
    t = (x - grid[segment]) / (grid[segment + 1] - grid[segment])
    rows = np.arange(x.size)
    basis[rows, segment] = 1.0 - t
    basis[rows, segment + 1] = t
    return basis


@dataclass(frozen=True)
class PiecewiseLinear:
    """Seconds at measured sizes (`knots`, strictly increasing), linear in between and past the
    ends, never below 0."""

    knots: tuple[int, ...]
    seconds: tuple[float, ...]

    def __post_init__(self):
        if len(self.knots) != len(self.seconds) or not self.knots:
            raise ValueError(f"piecewise curve: {len(self.knots)} knots but {len(self.seconds)} values")
        if any(b <= a for a, b in zip(self.knots, self.knots[1:])):
            raise ValueError(f"piecewise curve: knots {list(self.knots)} must be strictly increasing")

    def __call__(self, x) -> np.ndarray:
        """Shape: x scalar or [n] -> [n]. The hat-basis interpolation (hat_basis @ seconds) written
        out per point, (1 − t)·s_j + t·s_{j+1}: the same value up to rounding, and always the same
        rounding (a BLAS product's depends on the array's alignment and length: the same x gave
        last-bit different seconds from one call to the next)."""
        x = np.atleast_1d(np.asarray(x, dtype=float))
        knots, seconds = np.asarray(self.knots, dtype=float), np.asarray(self.seconds, dtype=float)
        if len(knots) == 1:
            return np.maximum(np.full(x.shape, seconds[0]), 0.0)
        segment = np.clip(np.searchsorted(knots, x, side="right") - 1, 0, len(knots) - 2)
        t = (x - knots[segment]) / (knots[segment + 1] - knots[segment])
        return np.maximum((1.0 - t) * seconds[segment] + t * seconds[segment + 1], 0.0)

    def to_dict(self) -> dict:
        return {"knots": list(self.knots), "seconds": list(self.seconds)}


def mean_curve(sizes, seconds) -> PiecewiseLinear:
    """The curve through the mean measured seconds at each distinct size. Shape: sizes, seconds [n]."""
    sizes, seconds = np.asarray(sizes), np.asarray(seconds, dtype=float)
    knots = np.unique(sizes)
    return PiecewiseLinear(tuple(int(k) for k in knots),
                           tuple(float(seconds[sizes == k].mean()) for k in knots))
