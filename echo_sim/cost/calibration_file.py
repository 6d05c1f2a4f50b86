"""Calibration files: measured step times that replace the roofline (COST_MODEL.md).

`echo-run calibrate` measures a grid (batch size × V × KV length × draft depth/width), fits it with
`echo_sim.cost.calibration_fit.fit_calibration`, and writes it with `write_calibration`. The simulator
reads it with `load_cost_model(calibration=path)`. Schema (format "echo-sim-calibration",
version 1; every number finite, none negative; docs/COST_MODEL_DEFAULTS.md has an example):

    format, version                  "echo-sim-calibration", 1
    hardware, model, draft_model     names (free text; presets are not needed to use the file)
    dtype, tp                        e.g. "bf16", 1
    software                         {"python": "3.11.9", "torch": "2.13.0", ...}
    command                          the command line that produced the file
    created_utc                      ISO time or null
    graph_buckets                    captured verify-token buckets ([] when none, e.g. on CPU)
    engine                           {"kv_capacity_tokens": int, "prefill_chunk_tokens": int}
    overhead                         {"step_s": s, "per_request_s": s}  host time outside forwards
    points                           [{batch_size, verify_tokens, kv_tokens, attention_pairs,
                                       draft_depth, draft_width, eager, verify_s, draft_s|null,
                                       draft_prefill_s, prefill, draft_first_tokens and
                                       draft_batch_size (the draft's level-1 tokens and
                                       requests, when not batch_size; optional), verify_fit_s,
                                       verify_rel_err, draft_fit_s, draft_rel_err}]
    fit                              {"verify": {...}, "draft": {...}|null, "fixed_zero": [...],
                                      "verify_rms_rel_err", "verify_max_abs_rel_err",
                                      "draft_rms_rel_err", "draft_max_abs_rel_err"}

The "curve" form of the fit (echo_sim.cost.calibration_fit) adds fit.verify.token_curve / prefill_curve
and fit.draft.level_curve / prefill_curve, each {"knots": [int, ...], "seconds": [s, ...]}.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from echo_sim.cost.calibration_fit import (CalibrationFit, CalibrationPoint, DraftFit, VerifyFit,
                                      fit_calibration, with_default_pairs)
from echo_sim.cost.presets import CostModelError, read_json
from echo_sim.cost.piecewise import PiecewiseLinear

FORMAT, VERSION = "echo-sim-calibration", 1


@dataclass(frozen=True)
class Calibration:
    path: str
    hardware: str
    model: str
    draft_model: str
    dtype: str
    tp: int
    software: dict
    command: str
    created_utc: str | None
    graph_buckets: tuple[int, ...]
    kv_capacity_tokens: int
    prefill_chunk_tokens: int
    step_overhead_s: float
    per_request_overhead_s: float
    points: tuple[CalibrationPoint, ...]
    fit: CalibrationFit


class _Reader:
    """Field access that names the file and the field in every error."""

    def __init__(self, path: str):
        self.path = path

    def fail(self, field: str, problem: str) -> CostModelError:
        return CostModelError(f"{self.path}: field '{field}' {problem}")

    def get(self, section: Mapping, key: str, field: str) -> Any:
        if not isinstance(section, Mapping) or key not in section:
            raise self.fail(field, "is missing")
        return section[key]

    def number(self, section: Mapping, key: str, field: str, *, positive: bool = False,
               optional: bool = False) -> float | None:
        raw = self.get(section, key, field) if not optional else section.get(key)
        if raw is None and optional:
            return None
        if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
            raise self.fail(field, f"= {raw!r}: must be a finite number")
        if raw < 0 or (positive and raw == 0):
            raise self.fail(field, f"= {raw!r}: must be {'> 0' if positive else '>= 0'}")
        return float(raw)

    def integer(self, section: Mapping, key: str, field: str, minimum: int = 0) -> int:
        raw = self.get(section, key, field)
        if isinstance(raw, bool) or not isinstance(raw, int) or raw < minimum:
            raise self.fail(field, f"= {raw!r}: must be an integer >= {minimum}")
        return raw

    def text(self, section: Mapping, key: str, field: str, optional: bool = False) -> str | None:
        raw = section.get(key) if optional else self.get(section, key, field)
        if raw is None and optional:
            return None
        if not isinstance(raw, str) or not raw:
            raise self.fail(field, f"= {raw!r}: must be a non-empty string")
        return raw


def _point(reader: _Reader, raw: Mapping, i: int) -> CalibrationPoint:
    at = f"points[{i}]"
    if not isinstance(raw, Mapping):
        raise reader.fail(at, "must be an object")
    bs = reader.integer(raw, "batch_size", f"{at}.batch_size", minimum=1)
    v = reader.integer(raw, "verify_tokens", f"{at}.verify_tokens", minimum=bs)
    depth = reader.integer(raw, "draft_depth", f"{at}.draft_depth")
    eager = reader.get(raw, "eager", f"{at}.eager")
    if not isinstance(eager, bool):
        raise reader.fail(f"{at}.eager", f"= {eager!r}: must be true or false")
    draft_s = reader.number(raw, "draft_s", f"{at}.draft_s", optional=True)
    if draft_s is not None and depth > 0 and draft_s == 0:
        raise reader.fail(f"{at}.draft_s", "= 0 with draft_depth > 0: must be > 0")
    draft_prefill_s = reader.number(raw, "draft_prefill_s", f"{at}.draft_prefill_s", positive=True, optional=True)
    prefill = raw.get("prefill", False)
    if not isinstance(prefill, bool):
        raise reader.fail(f"{at}.prefill", f"= {prefill!r}: must be true or false")
    first, rows = ((reader.integer(raw, name, f"{at}.{name}", minimum=1) if raw.get(name) is not None else None)
                   for name in ("draft_first_tokens", "draft_batch_size"))
    return CalibrationPoint(
        batch_size=bs, verify_tokens=v, kv_tokens=reader.integer(raw, "kv_tokens", f"{at}.kv_tokens"),
        attention_pairs=reader.integer(raw, "attention_pairs", f"{at}.attention_pairs"),
        draft_depth=depth, draft_width=reader.integer(raw, "draft_width", f"{at}.draft_width", minimum=1),
        eager=eager, verify_s=reader.number(raw, "verify_s", f"{at}.verify_s", positive=True),
        draft_s=draft_s, draft_prefill_s=draft_prefill_s, prefill=prefill, draft_first_tokens=first,
        draft_batch_size=rows)


def _curve(reader: _Reader, section: Mapping, key: str, field: str) -> PiecewiseLinear | None:
    raw = section.get(key)
    if raw is None:
        return None
    knots, seconds = reader.get(raw, "knots", f"{field}.knots"), reader.get(raw, "seconds", f"{field}.seconds")
    if not isinstance(knots, list) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in knots):
        raise reader.fail(f"{field}.knots", f"= {knots!r}: must be a list of integers >= 1")
    if not isinstance(seconds, list):
        raise reader.fail(f"{field}.seconds", "must be a list of numbers")
    values = [reader.number({"s": v}, "s", f"{field}.seconds[{i}]") for i, v in enumerate(seconds)]
    try:
        return PiecewiseLinear(tuple(knots), tuple(values))
    except ValueError as error:
        raise reader.fail(field, str(error)) from None


DRAFT_TERMS_ADDED_LATER = ("per_level_request_s",)  # absent from older files: 0 (they were fitted without it)


def _fit(reader: _Reader, raw: Mapping) -> CalibrationFit:
    verify_raw = reader.get(raw, "verify", "fit.verify")
    values = {}
    for f in fields(VerifyFit):
        if f.name.endswith("_curve"):
            values[f.name] = _curve(reader, verify_raw, f.name, f"fit.verify.{f.name}")
        elif f.name == "knee_tokens":
            knee = verify_raw.get("knee_tokens") if isinstance(verify_raw, Mapping) else None
            if knee is not None and (isinstance(knee, bool) or not isinstance(knee, int) or knee < 1):
                raise reader.fail("fit.verify.knee_tokens", f"= {knee!r}: must be null or an integer >= 1")
            values["knee_tokens"] = knee
        else:
            values[f.name] = reader.number(verify_raw, f.name, f"fit.verify.{f.name}")
    draft = None
    draft_raw = reader.get(raw, "draft", "fit.draft")
    if draft_raw is not None:
        draft = DraftFit(**{f.name: (_curve(reader, draft_raw, f.name, f"fit.draft.{f.name}")
                                     if f.name.endswith("_curve") else
                                     reader.number(draft_raw, f.name, f"fit.draft.{f.name}")
                                     if f.name not in DRAFT_TERMS_ADDED_LATER or f.name in draft_raw else 0.0)
                            for f in fields(DraftFit)})
    fixed = raw.get("fixed_zero", [])
    if not isinstance(fixed, list) or not all(isinstance(name, str) for name in fixed):
        raise reader.fail("fit.fixed_zero", "must be a list of strings")
    return CalibrationFit(verify=VerifyFit(**values), draft=draft, fixed_zero=tuple(fixed))


def _buckets(reader: _Reader, raw: Any) -> tuple[int, ...]:
    ok = isinstance(raw, list) and all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in raw)
    if not ok or sorted(set(raw)) != raw:
        raise reader.fail("graph_buckets", "must be a sorted list of distinct positive integers")
    return tuple(raw)


def calibration_from_dict(data: Mapping, path: str) -> Calibration:
    """Validate a parsed calibration file; CostModelError names the file and the field."""
    reader = _Reader(path)
    if data.get("format") != FORMAT:
        raise reader.fail("format", f"= {data.get('format')!r}: expected {FORMAT!r}")
    if data.get("version") != VERSION:
        raise reader.fail("version", f"= {data.get('version')!r}: this reader knows version {VERSION}")
    software = reader.get(data, "software", "software")
    if not isinstance(software, Mapping) or not all(isinstance(v, str) for v in software.values()):
        raise reader.fail("software", "must be an object of name: version strings")
    raw_points = reader.get(data, "points", "points")
    if not isinstance(raw_points, list) or not raw_points:
        raise reader.fail("points", "must be a non-empty list")
    engine, overhead = reader.get(data, "engine", "engine"), reader.get(data, "overhead", "overhead")
    calibration = Calibration(
        path=path,
        hardware=reader.text(data, "hardware", "hardware"),
        model=reader.text(data, "model", "model"),
        draft_model=reader.text(data, "draft_model", "draft_model"),
        dtype=reader.text(data, "dtype", "dtype"),
        tp=reader.integer(data, "tp", "tp", minimum=1),
        software=dict(software),
        command=reader.text(data, "command", "command"),
        created_utc=reader.text(data, "created_utc", "created_utc", optional=True),
        graph_buckets=_buckets(reader, reader.get(data, "graph_buckets", "graph_buckets")),
        kv_capacity_tokens=reader.integer(engine, "kv_capacity_tokens", "engine.kv_capacity_tokens", 1),
        prefill_chunk_tokens=reader.integer(engine, "prefill_chunk_tokens", "engine.prefill_chunk_tokens", 1),
        step_overhead_s=reader.number(overhead, "step_s", "overhead.step_s"),
        per_request_overhead_s=reader.number(overhead, "per_request_s", "overhead.per_request_s"),
        points=tuple(_point(reader, raw, i) for i, raw in enumerate(raw_points)),
        fit=_fit(reader, reader.get(data, "fit", "fit")),
    )
    # Every rate the simulator reports divides by step time: a fit that costs a step 0 s is no fit.
    smallest_step = (float(np.asarray(calibration.fit.verify.forward(1.0, 1, 0.0, 1.0)).sum())
                     + calibration.step_overhead_s + calibration.per_request_overhead_s)
    if not smallest_step > 0:
        raise reader.fail("fit.verify", f"predicts {smallest_step} s for a one-token step of one request "
                                        "(with overhead): a step must take time")
    return calibration


def load_calibration(path: str | Path) -> Calibration:
    return calibration_from_dict(read_json(Path(path)), str(path))


def _rel(fit_s: float | None, measured: float | None) -> float | None:
    return None if fit_s is None or measured is None or measured == 0 else (fit_s - measured) / measured


def _error_summary(errors: list[float]) -> tuple[float | None, float | None]:
    if not errors:
        return None, None
    array = np.asarray(errors)
    return float(np.sqrt(np.mean(array ** 2))), float(np.max(np.abs(array)))


def _points_with_errors(points: list[CalibrationPoint], fit: CalibrationFit) -> tuple[list[dict], dict]:
    rows, verify_err, draft_err = [], [], []
    for point in points:
        verify_fit, draft_fit = fit.predict(point)
        row = {f.name: getattr(point, f.name) for f in fields(CalibrationPoint)}
        for optional in ("draft_prefill_s", "draft_first_tokens", "draft_batch_size"):
            if row[optional] is None:
                del row[optional]
        if not row["prefill"]:
            del row["prefill"]
        row.update(verify_fit_s=verify_fit, verify_rel_err=_rel(verify_fit, point.verify_s))
        measured_draft = point.draft_s if point.draft_depth > 0 else None
        row.update(draft_fit_s=draft_fit if measured_draft is not None else None,
                   draft_rel_err=_rel(draft_fit, measured_draft))
        verify_err.append(row["verify_rel_err"])
        if row["draft_rel_err"] is not None:
            draft_err.append(row["draft_rel_err"])
        rows.append(row)
    (v_rms, v_max), (d_rms, d_max) = _error_summary(verify_err), _error_summary(draft_err)
    summary = {"verify_rms_rel_err": v_rms, "verify_max_abs_rel_err": v_max,
               "draft_rms_rel_err": d_rms, "draft_max_abs_rel_err": d_max}
    return rows, summary


def _as_mapping(point: CalibrationPoint | Mapping) -> Mapping:
    if isinstance(point, CalibrationPoint):
        return {f.name: getattr(point, f.name) for f in fields(CalibrationPoint)}
    return with_default_pairs(point) if isinstance(point, Mapping) else point


def write_calibration(path: str | Path, *, points: Iterable[CalibrationPoint | Mapping], hardware: str,
                      model: str, draft_model: str, dtype: str, tp: int, software: Mapping[str, str],
                      command: str, graph_buckets: Iterable[int], kv_capacity_tokens: int,
                      prefill_chunk_tokens: int, step_overhead_s: float, per_request_overhead_s: float,
                      fit: CalibrationFit | None = None, form: str = "linear",
                      created_utc: str | None = None) -> Calibration:
    """Validate, fit (unless `fit` is given; `form` as in fit_calibration), add per-point fit
    errors, write atomically.

    Nothing is written when anything is invalid. Returns the Calibration as `load_calibration`
    will read it back.
    """
    reader = _Reader(str(path))
    points = [_point(reader, _as_mapping(p), i) for i, p in enumerate(points)]  # named errors first
    if not points:
        raise reader.fail("points", "must be a non-empty list")
    fit = fit if fit is not None else fit_calibration(points, form)
    rows, summary = _points_with_errors(points, fit)
    data = {
        "format": FORMAT, "version": VERSION, "hardware": hardware, "model": model,
        "draft_model": draft_model, "dtype": dtype, "tp": tp, "software": dict(software),
        "command": command, "created_utc": created_utc, "graph_buckets": list(graph_buckets),
        "engine": {"kv_capacity_tokens": kv_capacity_tokens, "prefill_chunk_tokens": prefill_chunk_tokens},
        "overhead": {"step_s": step_overhead_s, "per_request_s": per_request_overhead_s},
        "points": rows, "fit": {**fit.to_dict(), **summary},
    }
    path = Path(path)
    calibration = calibration_from_dict(data, str(path))  # refuse before touching the disk
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return calibration


class CalibratedTerms:
    """The step-time terms of a calibration file (same interface as cost_roofline.RooflineTerms).

    prefill: the target's measured prefills (or the verify fit at bs = 1 over the chunk, causal
    pairs, eager) plus, when the policy drafts, the draft's (measured prefills, or one draft level).
    """

    def __init__(self, calibration: Calibration):
        self.calibration = calibration
        self.fit = calibration.fit

    def verify_forward(self, tokens, batch_size: int, kv_tokens: float, pairs):
        return self.fit.verify.forward(tokens, batch_size, kv_tokens, pairs)

    def launch(self, eager):
        return np.where(eager, self.fit.verify.eager_s, 0.0)

    def draft(self, batch_size: int, depth: int, width: int, kv_tokens: float, extend_tokens: int | None = None) -> float:
        if depth == 0:
            return 0.0
        if self.fit.draft is None:
            raise CostModelError(f"{self.calibration.path}: no draft was timed (fit.draft is null); "
                                 "it can only cost steps without drafting")
        return self.fit.draft.time(batch_size, depth, width, kv_tokens, extend_tokens)

    def mixed_forward(self, tokens: float, batch_size: int, kv_tokens: float, pairs: float,
                      prefill_tokens: int, prefill_context: int) -> float:
        """Verify and a prefill chunk in one forward: the verify fit over V + P tokens (its LM head
        term covers every token, so this overestimates by the chunk's logits)."""
        chunk_pairs = prefill_tokens * prefill_context + prefill_tokens * (prefill_tokens + 1) / 2
        return float(self.fit.verify.forward(np.array([tokens + prefill_tokens]), batch_size + 1,
                                             kv_tokens + prefill_context, np.array([pairs + chunk_pairs]))[0])

    def draft_prefill(self, tokens: int, context: int) -> float:
        return 0.0 if tokens == 0 or self.fit.draft is None else self.fit.draft.prefill(tokens, context)

    def prefill(self, tokens: int, context: int, with_draft: bool = True) -> float:
        if tokens == 0:
            return 0.0
        seconds = self.fit.verify.prefill(tokens, context) + self.fit.verify.eager_s
        if with_draft:
            seconds += self.draft_prefill(tokens, context)
        return seconds

    def scheduler(self, batch_size: int) -> float:
        return self.calibration.step_overhead_s + self.calibration.per_request_overhead_s * batch_size
