"""Fit the measured step-time grid of `echo-run calibrate` to the calibrated cost model.

Fitted model (all coefficients >= 0, seconds):

    T_verify(bs, V, KV, pairs, eager) = a + b·bs + c·V + d·ΣKV + p·pairs + c2·max(0, V − knee) + g·eager
    T_draft(bs, S, k, KV)              = S·e + f·tokens + h·S·ΣKV,   tokens = bs + (S − 1)·bs·k

`knee` is where the forward turns compute-bound: chosen among the measured V values by BIC
(no knee unless it pays for its extra parameter). Least squares on relative error (rows weighted
1 / measured), so short and long steps count alike. A coefficient the grid cannot identify (its
column adds no rank, e.g. `eager` when every point ran eagerly) or that comes out negative is fixed
at 0 and listed in `fixed_zero`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Iterable, Mapping

import numpy as np

from echo_sim.cost_presets import CostModelError

VERIFY_COLUMNS = ("intercept_s", "per_token_s", "per_request_s", "per_kv_token_s",
                  "per_attention_pair_s", "eager_s", "per_token_above_knee_s")
DRAFT_COLUMNS = ("per_level_s", "per_token_s", "per_level_kv_token_s")


@dataclass(frozen=True)
class CalibrationPoint:
    """One measured grid point. draft_s None: the draft was not timed at this point."""

    batch_size: int
    verify_tokens: int
    kv_tokens: int
    attention_pairs: int
    draft_depth: int
    draft_width: int
    eager: bool
    verify_s: float
    draft_s: float | None = None

    @classmethod
    def from_mapping(cls, raw: Mapping) -> "CalibrationPoint":
        """From a dict; attention_pairs defaults to V spread evenly (`with_default_pairs`)."""
        raw = with_default_pairs(raw)
        missing = [f.name for f in fields(cls) if f.name not in raw and f.name != "draft_s"]
        if missing:
            raise CostModelError(f"calibration point {dict(raw)} lacks {', '.join(missing)}")
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


def with_default_pairs(raw: Mapping) -> Mapping:
    """`raw` plus attention_pairs = V·(ΣKV + V) / bs when absent and computable (V spread evenly)."""
    if "attention_pairs" in raw:
        return raw
    try:
        bs, v, kv = raw["batch_size"], raw["verify_tokens"], raw["kv_tokens"]
        return {**raw, "attention_pairs": int(round(v * (kv + v) / bs))}
    except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError):
        return raw  # the validator names the bad field


@dataclass(frozen=True)
class VerifyFit:
    intercept_s: float = 0.0
    per_token_s: float = 0.0
    per_request_s: float = 0.0
    per_kv_token_s: float = 0.0
    per_attention_pair_s: float = 0.0
    eager_s: float = 0.0
    per_token_above_knee_s: float = 0.0
    knee_tokens: int | None = None

    def forward(self, tokens, batch_size, kv_tokens, pairs):
        """Seconds [n] without the eager term. Shape: tokens, pairs [n] (or scalars)."""
        tokens = np.asarray(tokens, dtype=float)
        knee = self.knee_tokens if self.knee_tokens is not None else math.inf
        return (self.intercept_s + self.per_token_s * tokens + self.per_request_s * batch_size
                + self.per_kv_token_s * np.asarray(kv_tokens, dtype=float)
                + self.per_attention_pair_s * np.asarray(pairs, dtype=float)
                + self.per_token_above_knee_s * np.maximum(tokens - knee, 0.0))


@dataclass(frozen=True)
class DraftFit:
    per_level_s: float = 0.0
    per_token_s: float = 0.0
    per_level_kv_token_s: float = 0.0

    def time(self, batch_size: int, depth: int, width: int, kv_tokens: float) -> float:
        if depth == 0:
            return 0.0
        tokens = batch_size + (depth - 1) * batch_size * width
        return depth * self.per_level_s + tokens * self.per_token_s \
            + depth * kv_tokens * self.per_level_kv_token_s


@dataclass(frozen=True)
class CalibrationFit:
    verify: VerifyFit
    draft: DraftFit | None
    fixed_zero: tuple[str, ...] = ()

    def predict(self, point: CalibrationPoint) -> tuple[float, float | None]:
        """(verify seconds, draft seconds or None) the fit gives for a measured point."""
        verify = float(self.verify.forward(point.verify_tokens, point.batch_size, point.kv_tokens,
                                           point.attention_pairs)) + self.verify.eager_s * point.eager
        draft = None
        if self.draft is not None:
            draft = self.draft.time(point.batch_size, point.draft_depth, point.draft_width,
                                    point.kv_tokens)
        return verify, draft

    def to_dict(self) -> dict:
        return {"verify": asdict(self.verify),
                "draft": asdict(self.draft) if self.draft is not None else None,
                "fixed_zero": list(self.fixed_zero)}


def _verify_matrix(points: list[CalibrationPoint], knee: int | None) -> np.ndarray:
    """Shape: [points, len(VERIFY_COLUMNS)] in VERIFY_COLUMNS order."""
    v = np.array([p.verify_tokens for p in points], dtype=float)
    hinge = np.zeros_like(v) if knee is None else np.maximum(v - knee, 0.0)
    return np.column_stack([
        np.ones_like(v), v,
        [p.batch_size for p in points], [p.kv_tokens for p in points],
        [p.attention_pairs for p in points], [float(p.eager) for p in points], hinge,
    ]).astype(float)


def _nonnegative_lstsq(x: np.ndarray, y: np.ndarray, names: tuple[str, ...]):
    """Relative-error least squares with coefficients >= 0.

    Columns that add no rank (in `names` order) or come out negative are fixed at 0, one at a
    time, most negative contribution first. Returns (coefficients [cols], rss, fixed names).
    """
    weighted = x / y[:, None]
    scale = np.where(np.abs(weighted).max(axis=0) > 0, np.abs(weighted).max(axis=0), 1.0)
    weighted = weighted / scale  # equilibrate columns so rank tests see every column alike
    active: list[int] = []
    for col in range(x.shape[1]):
        trial = active + [col]
        if np.linalg.matrix_rank(weighted[:, trial], tol=1e-9 * math.sqrt(len(y))) == len(trial):
            active = trial
    while True:
        coef = np.zeros(x.shape[1])
        if active:
            coef[active] = np.linalg.lstsq(weighted[:, active], np.ones_like(y), rcond=None)[0]
        contribution = coef * np.abs(weighted).mean(axis=0)
        worst = int(np.argmin(contribution))
        if contribution[worst] >= -1e-12:
            break
        active.remove(worst)
    rss = float(np.sum((weighted @ coef - 1.0) ** 2))
    fixed = tuple(names[c] for c in range(x.shape[1]) if c not in active)
    return np.clip(coef / scale, 0.0, None), rss, fixed


def _bic(rss: float, rows: int, params: int) -> float:
    return rows * math.log(rss / rows + 1e-30) + params * math.log(rows)


def fit_verify(points: list[CalibrationPoint]) -> tuple[VerifyFit, tuple[str, ...]]:
    y = np.array([p.verify_s for p in points], dtype=float)
    distinct = sorted({p.verify_tokens for p in points})
    best = None
    for knee in [None] + distinct[1:-1]:  # a knee needs measured V on both sides
        coef, rss, fixed = _nonnegative_lstsq(_verify_matrix(points, knee), y, VERIFY_COLUMNS)
        free = len(VERIFY_COLUMNS) - len(fixed) + (knee is not None)
        score = _bic(rss, len(y), free)
        if best is None or score < best[0] - 1e-9:
            best = (score, knee, coef, fixed)
    _, knee, coef, fixed = best
    values = dict(zip(VERIFY_COLUMNS, (float(c) for c in coef)))
    if knee is None or values["per_token_above_knee_s"] == 0.0:
        knee = None
    return VerifyFit(**values, knee_tokens=knee), fixed


def fit_draft(points: list[CalibrationPoint]) -> tuple[DraftFit | None, tuple[str, ...]]:
    rows = [p for p in points if p.draft_depth > 0 and p.draft_s is not None]
    if not rows:
        return None, ()
    depth = np.array([p.draft_depth for p in rows], dtype=float)
    tokens = np.array([p.batch_size * (1 + (p.draft_depth - 1) * p.draft_width) for p in rows], dtype=float)
    kv = np.array([p.kv_tokens for p in rows], dtype=float)
    y = np.array([p.draft_s for p in rows], dtype=float)
    if not np.all(np.isfinite(y) & (y > 0)):
        raise CostModelError("calibration fit: every timed draft_s with draft_depth > 0 must be finite and > 0")
    coef, _, fixed = _nonnegative_lstsq(np.column_stack([depth, tokens, depth * kv]), y, DRAFT_COLUMNS)
    return DraftFit(*(float(c) for c in coef)), tuple(f"draft.{name}" for name in fixed)


def fit_calibration(points: Iterable[CalibrationPoint | Mapping]) -> CalibrationFit:
    """Fit verify (and draft, where timed) models to measured points; see module docstring."""
    points = [p if isinstance(p, CalibrationPoint) else CalibrationPoint.from_mapping(p) for p in points]
    if len(points) < 2:
        raise CostModelError(f"calibration fit needs at least 2 measured points, got {len(points)}")
    if any(not (p.verify_s > 0 and math.isfinite(p.verify_s)) for p in points):
        raise CostModelError("calibration fit: every verify_s must be a finite number > 0")
    verify, verify_fixed = fit_verify(points)
    draft, draft_fixed = fit_draft(points)
    return CalibrationFit(verify=verify, draft=draft, fixed_zero=verify_fixed + draft_fixed)
