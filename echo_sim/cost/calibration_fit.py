"""Fit the measured step-time grid of `echo-run calibrate` to the calibrated cost model.

Two forms (all coefficients >= 0, seconds). "linear":

    T_verify(bs, V, KV, pairs, eager) = a + b·bs + c·V + d·ΣKV + p·pairs + c2·max(0, V − knee) + g·eager
    T_draft(bs, S, k, KV)              = S·e + f·tokens + h·S·ΣKV,   tokens = bs + (S − 1)·bs·k

`knee` is where the forward turns compute-bound: chosen among the measured V values by BIC
(no knee unless it pays for its extra parameter). "curve" (what `echo-run calibrate` writes):

    T_verify = g(V) + b·bs + d·ΣKV + p·pairs + e·eager
    T_draft  = h(n₁) + (S − 1)·h(bs·k) + h_r·S·bs + h_kv·S·ΣKV   (level 1 runs n₁ tokens: bs, or
               the requests' pending tokens; the rest bs·k; every level has one row per request)
    prefill of P tokens = t(P) (target), q(P) (draft)

where g, h are piecewise linear through one fitted value per measured token count
(echo_sim.cost.piecewise) and t, q go through the measured prefills (a prefill computes the LM head
for the last token only, a verification for every token): the forward's time as a
function of its token count is kept as measured, not forced onto a line (on one CPU thread it is
not monotone). Least squares on relative error (rows weighted 1 / measured), so short and long
steps count alike. A coefficient the grid cannot identify (its column adds no rank, e.g. `eager`
when every point ran eagerly) or that comes out negative is fixed at 0 and listed in `fixed_zero`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Iterable, Mapping

import numpy as np

from echo_sim.cost.presets import CostModelError
from echo_sim.cost.piecewise import PiecewiseLinear, hat_basis, mean_curve

VERIFY_COLUMNS = ("intercept_s", "per_token_s", "per_request_s", "per_kv_token_s",
                  "per_attention_pair_s", "eager_s", "per_token_above_knee_s")
DRAFT_COLUMNS = ("per_level_s", "per_token_s", "per_level_kv_token_s")
FORMS = ("linear", "curve")


@dataclass(frozen=True)
class CalibrationPoint:
    """One measured grid point. draft_s None: the draft was not timed at this point.
    draft_first_tokens: tokens of the draft's first level (None: one pending token per request; a
    draft extend over accepted tokens runs more); draft_batch_size: requests of the timed draft
    (None: batch_size; a curve point's draft extend spreads its tokens over several requests).
    prefill: verify_s is the target's prefill of a chunk of verify_tokens (bs 1, LM head on the
    last token only, as an engine prefills); draft_prefill_s: the draft's forward over that chunk."""

    batch_size: int
    verify_tokens: int
    kv_tokens: int
    attention_pairs: int
    draft_depth: int
    draft_width: int
    eager: bool
    verify_s: float
    draft_s: float | None = None
    draft_prefill_s: float | None = None
    prefill: bool = False
    draft_first_tokens: int | None = None
    draft_batch_size: int | None = None

    @property
    def draft_requests(self) -> int:
        return self.draft_batch_size or self.batch_size

    @property
    def draft_kv_tokens(self) -> float:
        """ΣKV of the draft's requests (the grid gives every request of a point the same prefix)."""
        return self.kv_tokens * self.draft_requests / self.batch_size

    @property
    def first_level_tokens(self) -> int:
        return self.draft_first_tokens or self.draft_requests

    @classmethod
    def from_mapping(cls, raw: Mapping) -> "CalibrationPoint":
        """From a dict; attention_pairs defaults to V spread evenly (`with_default_pairs`)."""
        raw = with_default_pairs(raw)
        missing = [f.name for f in fields(cls) if f.name not in raw and f.name not in OPTIONAL_POINT_FIELDS]
        if missing:
            raise CostModelError(f"calibration point {dict(raw)} lacks {', '.join(missing)}")
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


OPTIONAL_POINT_FIELDS = ("draft_s", "draft_prefill_s", "prefill", "draft_first_tokens", "draft_batch_size")


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
    token_curve: PiecewiseLinear | None = None  # "curve" form: replaces a + c·V + c2·hinge
    prefill_curve: PiecewiseLinear | None = None  # "curve" form: measured prefills by chunk tokens

    def forward(self, tokens, batch_size, kv_tokens, pairs):
        """Seconds [n] without the eager term. Shape: tokens, pairs [n] (or scalars)."""
        tokens = np.asarray(tokens, dtype=float)
        if self.token_curve is not None:
            by_tokens = self.token_curve(tokens).reshape(tokens.shape)
        else:
            knee = self.knee_tokens if self.knee_tokens is not None else math.inf
            by_tokens = (self.intercept_s + self.per_token_s * tokens
                         + self.per_token_above_knee_s * np.maximum(tokens - knee, 0.0))
        return (by_tokens + self.per_request_s * batch_size
                + self.per_kv_token_s * np.asarray(kv_tokens, dtype=float)
                + self.per_attention_pair_s * np.asarray(pairs, dtype=float))

    def prefill(self, tokens: int, context: int) -> float:
        """Seconds of a prompt chunk of `tokens` after `context` cached tokens (without eager)."""
        if self.prefill_curve is None:
            return float(self.forward(tokens, 1, context, tokens * context + tokens * (tokens + 1) / 2))
        return float(self.prefill_curve(tokens)[0] + self.per_kv_token_s * context
                     + self.per_attention_pair_s * tokens * context)


@dataclass(frozen=True)
class DraftFit:
    per_level_s: float = 0.0
    per_token_s: float = 0.0
    per_level_kv_token_s: float = 0.0
    per_level_request_s: float = 0.0  # "curve" form: a level's rows (one per request) beyond its tokens
    level_curve: PiecewiseLinear | None = None  # "curve" form: seconds of one level by its tokens
    prefill_curve: PiecewiseLinear | None = None  # measured draft prefills by chunk tokens

    def time(self, batch_size: int, depth: int, width: int, kv_tokens: float,
             first_tokens: int | None = None) -> float:
        """Level 1 over first_tokens (default batch_size), levels 2..depth over batch_size·width."""
        if depth == 0:
            return 0.0
        first_tokens = first_tokens or batch_size
        kv = depth * (kv_tokens * self.per_level_kv_token_s + batch_size * self.per_level_request_s)
        if self.level_curve is not None:
            first, rest = self.level_curve([first_tokens, batch_size * width])
            return float(first + (depth - 1) * rest + kv)
        tokens = first_tokens + (depth - 1) * batch_size * width
        return depth * self.per_level_s + tokens * self.per_token_s + kv

    def prefill(self, tokens: int, context: int) -> float:
        """The draft's forward over a prompt chunk of `tokens` after `context` cached tokens."""
        if self.prefill_curve is not None:
            return float(self.prefill_curve(tokens)[0]) + self.per_level_kv_token_s * context
        return self.per_level_s + self.per_token_s * tokens + self.per_level_kv_token_s * context


@dataclass(frozen=True)
class CalibrationFit:
    verify: VerifyFit
    draft: DraftFit | None
    fixed_zero: tuple[str, ...] = ()

    def predict(self, point: CalibrationPoint) -> tuple[float, float | None]:
        """(verify seconds, draft seconds or None) the fit gives for a measured point."""
        if point.prefill and self.verify.prefill_curve is not None:
            verify = self.verify.prefill(point.verify_tokens, 0)
        else:
            verify = float(self.verify.forward(point.verify_tokens, point.batch_size, point.kv_tokens,
                                               point.attention_pairs))
        verify += self.verify.eager_s * point.eager
        draft = None
        if self.draft is not None:
            draft = self.draft.time(point.draft_requests, point.draft_depth, point.draft_width,
                                    point.draft_kv_tokens, first_tokens=point.first_level_tokens)
        return verify, draft

    def to_dict(self) -> dict:
        return {"verify": _fit_dict(self.verify),
                "draft": _fit_dict(self.draft) if self.draft is not None else None,
                "fixed_zero": list(self.fixed_zero)}


def _fit_dict(fit) -> dict:
    """asdict, with absent curves left out (files of the linear form look as they always did)."""
    out = {f.name: getattr(fit, f.name) for f in fields(fit)}
    for name, value in list(out.items()):
        if isinstance(value, PiecewiseLinear):
            out[name] = value.to_dict()
        elif value is None and name.endswith("_curve"):
            del out[name]
    return out


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


CURVE_EXTRA_COLUMNS = ("per_request_s", "per_kv_token_s", "per_attention_pair_s", "eager_s")


def fit_verify_curve(points: list[CalibrationPoint]) -> tuple[VerifyFit, tuple[str, ...]]:
    """g(V) at every measured V plus the additive batch, KV, attention and eager terms; prefill
    points (LM head on one token, not V) get their own curve when two chunk sizes were timed."""
    prefills = [p for p in points if p.prefill]
    prefill_curve = (mean_curve([p.verify_tokens for p in prefills], [p.verify_s for p in prefills])
                     if len({p.verify_tokens for p in prefills}) >= 2 else None)
    if prefill_curve is not None:
        points = [p for p in points if not p.prefill]
    knots = sorted({p.verify_tokens for p in points})
    x = np.column_stack([
        hat_basis([p.verify_tokens for p in points], knots),
        [p.batch_size for p in points], [p.kv_tokens for p in points],
        [p.attention_pairs for p in points], [float(p.eager) for p in points]]).astype(float)
    names = tuple(f"token_curve[{k}]" for k in knots) + CURVE_EXTRA_COLUMNS
    coef, _, fixed = _nonnegative_lstsq(x, np.array([p.verify_s for p in points], dtype=float), names)
    extra = dict(zip(CURVE_EXTRA_COLUMNS, (float(c) for c in coef[len(knots):])))
    curve = PiecewiseLinear(tuple(knots), tuple(float(c) for c in coef[: len(knots)]))
    return VerifyFit(**extra, token_curve=curve, prefill_curve=prefill_curve), fixed


def _draft_rows(points: list[CalibrationPoint]) -> list[CalibrationPoint]:
    rows = [p for p in points if p.draft_depth > 0 and p.draft_s is not None]
    if not np.all([math.isfinite(p.draft_s) and p.draft_s > 0 for p in rows]):
        raise CostModelError("calibration fit: every timed draft_s with draft_depth > 0 must be finite and > 0")
    return rows


def fit_draft(points: list[CalibrationPoint]) -> tuple[DraftFit | None, tuple[str, ...]]:
    rows = _draft_rows(points)
    if not rows:
        return None, ()
    depth = np.array([p.draft_depth for p in rows], dtype=float)
    tokens = np.array([p.first_level_tokens + p.draft_requests * (p.draft_depth - 1) * p.draft_width for p in rows],
                      dtype=float)
    kv = np.array([p.draft_kv_tokens for p in rows], dtype=float)
    y = np.array([p.draft_s for p in rows], dtype=float)
    coef, _, fixed = _nonnegative_lstsq(np.column_stack([depth, tokens, depth * kv]), y, DRAFT_COLUMNS)
    return DraftFit(*(float(c) for c in coef)), tuple(f"draft.{name}" for name in fixed)


def fit_draft_curve(points: list[CalibrationPoint]) -> tuple[DraftFit | None, tuple[str, ...]]:
    """h(level tokens) at every measured level size plus the per-level KV and request-row terms
    (the latter identified where one level size was timed both as many one-token rows and as one
    request's pending tokens); q through the measured draft prefills (when at least two chunk sizes
    were timed)."""
    rows = _draft_rows(points)
    prefills = [p for p in points if p.draft_prefill_s is not None]
    prefill_curve = (mean_curve([p.verify_tokens for p in prefills], [p.draft_prefill_s for p in prefills])
                     if len({p.verify_tokens for p in prefills}) >= 2 else None)
    if not rows:
        return (DraftFit(prefill_curve=prefill_curve) if prefill_curve else None), ()
    first = [p.first_level_tokens for p in rows]
    rest = [p.draft_requests * p.draft_width for p in rows]
    knots = sorted(set(first) | {n for n, p in zip(rest, rows) if p.draft_depth > 1})
    later_levels = np.array([p.draft_depth - 1 for p in rows], dtype=float)[:, None]
    x = np.column_stack([hat_basis(first, knots) + later_levels * hat_basis(rest, knots),
                         [p.draft_depth * p.draft_kv_tokens for p in rows],
                         [p.draft_depth * p.draft_requests for p in rows]])
    names = tuple(f"level_curve[{k}]" for k in knots) + ("per_level_kv_token_s", "per_level_request_s")
    coef, _, fixed = _nonnegative_lstsq(x, np.array([p.draft_s for p in rows], dtype=float), names)
    curve = PiecewiseLinear(tuple(knots), tuple(float(c) for c in coef[: len(knots)]))
    fit = DraftFit(per_level_kv_token_s=float(coef[-2]), per_level_request_s=float(coef[-1]), level_curve=curve,
                   prefill_curve=prefill_curve)
    return fit, tuple(f"draft.{name}" for name in fixed)


def fit_calibration(points: Iterable[CalibrationPoint | Mapping], form: str = "linear") -> CalibrationFit:
    """Fit verify (and draft, where timed) models to measured points; see module docstring."""
    if form not in FORMS:
        raise CostModelError(f"calibration fit form {form!r}: expected one of {', '.join(FORMS)}")
    points = [p if isinstance(p, CalibrationPoint) else CalibrationPoint.from_mapping(p) for p in points]
    if len(points) < 2:
        raise CostModelError(f"calibration fit needs at least 2 measured points, got {len(points)}")
    if any(not (p.verify_s > 0 and math.isfinite(p.verify_s)) for p in points):
        raise CostModelError("calibration fit: every verify_s must be a finite number > 0")
    bad = [p for p in points if p.draft_prefill_s is not None and not (p.draft_prefill_s > 0 and math.isfinite(p.draft_prefill_s))]
    if bad:
        raise CostModelError(f"calibration fit: draft_prefill_s {bad[0].draft_prefill_s!r} must be a finite number > 0")
    if form == "curve":
        (verify, verify_fixed), (draft, draft_fixed) = fit_verify_curve(points), fit_draft_curve(points)
    else:
        (verify, verify_fixed), (draft, draft_fixed) = fit_verify(points), fit_draft(points)
    return CalibrationFit(verify=verify, draft=draft, fixed_zero=verify_fixed + draft_fixed)
