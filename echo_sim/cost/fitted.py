"""Fitted rates: what public GPU measurements say the roofline's ceilings and overheads really are.

A fitted profile (echo_sim/presets/fitted/<hardware>.json, written by `benchmarks/fit_cost.py`)
turns the roofline of `echo_sim.cost.roofline` into a fitted model. Per GPU of a TP group:

    GEMM (dense linear, expert, LM head)
        max(FLOPs / (F · flops_fraction(FLOPs)), bytes / (B · bandwidth_fraction(weight bytes)))
        + gemm_floor_s
        where F, B are the hardware preset's ceilings and each fraction is piecewise linear in
        log2 of the GEMM's size (clamped at the ends): small GEMMs reach neither ceiling. The
        shipped flops_fraction is Vidur's isolated GEMMs times one measured engine's GEMM
        efficiency in whole steps (the profile's `engine`, `measured_engines`).
    attention           max(FLOPs / (F · attention_flops_fraction), bytes / (B · attention_bandwidth_fraction))
    element-wise ops    per layer: elementwise_layer_s + tokens · elementwise bytes / (B · elementwise_fraction)
                        (norms, residual adds, RoPE, activation: Vidur measures them, the plain
                        roofline omits them)
    all-reduce          2 per layer at TP > 1: ring bytes / link + allreduce_base_s + allreduce_per_log2_tp_s · log2 TP
    eager launches      eager_layer_s per layer (host time of an eagerly launched layer beyond its GPU time)

The ceilings stay the preset's (measured on the H200), so the h200 profile is the H100 curve
shapes on the h200 ceilings. CUDA-graph replay cost and the serving engine's per-step overhead are
not in the public data (its engines ran eagerly; each engine has its own host overhead) and stay
the hardware preset's estimates. Each profile lists which numbers were fitted and which derived.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from importlib import resources
from pathlib import Path

import numpy as np

from echo_sim.cost.presets import CostModelError, read_json

FORMAT, VERSION = "echo-sim-fitted-rates", 1


@dataclass(frozen=True)
class FittedRates:
    """The fitted parameters (units: s; fractions of the preset ceilings; curve knots in log2 size)."""

    bandwidth_log2_bytes: tuple[float, ...]
    bandwidth_fraction: tuple[float, ...]
    flops_log2: tuple[float, ...]
    flops_fraction: tuple[float, ...]
    gemm_floor_s: float
    elementwise_layer_s: float
    elementwise_fraction: float
    attention_flops_fraction: float
    attention_bandwidth_fraction: float
    allreduce_base_s: float
    allreduce_per_log2_tp_s: float
    eager_layer_s: float

    def __post_init__(self):
        for knots, values, name in ((self.bandwidth_log2_bytes, self.bandwidth_fraction, "bandwidth"),
                                    (self.flops_log2, self.flops_fraction, "flops")):
            if len(knots) != len(values) or not knots:
                raise CostModelError(f"fitted rates: {name} curve has {len(knots)} knots, {len(values)} values")
            if any(b <= a for a, b in zip(knots, knots[1:])):
                raise CostModelError(f"fitted rates: {name} curve knots must be strictly increasing")
        for f in fields(self):
            for x in np.atleast_1d(getattr(self, f.name)):
                if not math.isfinite(x) or x < 0:
                    raise CostModelError(f"fitted rates: {f.name} = {x!r} must be finite and >= 0")
        for name in ("bandwidth_fraction", "flops_fraction", "elementwise_fraction",
                     "attention_flops_fraction", "attention_bandwidth_fraction"):
            if min(np.atleast_1d(getattr(self, name))) <= 0:
                raise CostModelError(f"fitted rates: {name} must be > 0")

    def bandwidth(self, weight_bytes) -> np.ndarray:
        """Fraction of the memory ceiling a GEMM with this many weight bytes streams at."""
        return np.interp(np.log2(np.maximum(weight_bytes, 1.0)), self.bandwidth_log2_bytes, self.bandwidth_fraction)

    def flops(self, gemm_flops) -> np.ndarray:
        """Fraction of the matmul ceiling a GEMM of this many FLOPs reaches."""
        return np.interp(np.log2(np.maximum(gemm_flops, 1.0)), self.flops_log2, self.flops_fraction)

    def allreduce_latency_s(self, tp: int) -> float:
        return self.allreduce_base_s + self.allreduce_per_log2_tp_s * math.log2(tp) if tp > 1 else 0.0

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict, where: str) -> "FittedRates":
        values = {}
        for f in fields(cls):
            if f.name not in data:
                raise CostModelError(f"{where}: field 'rates.{f.name}' is missing")
            raw = data[f.name]
            ok = (all(_is_number(x) for x in raw) if isinstance(raw, list) else _is_number(raw))
            if not ok:
                raise CostModelError(f"{where}: field 'rates.{f.name}' = {raw!r} is not a number (list)")
            values[f.name] = tuple(float(x) for x in raw) if isinstance(raw, list) else float(raw)
        try:
            return cls(**values)
        except CostModelError as error:
            raise CostModelError(f"{where}: {error}") from None


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


@dataclass(frozen=True)
class FittedProfile:
    """A fitted profile file: the rates plus what was fitted, what derived, and how."""

    hardware: str
    rates: FittedRates
    fitted: tuple[str, ...]
    derived: dict
    command: str
    path: str


def _fitted_dir() -> Path:
    return Path(str(resources.files("echo_sim") / "presets" / "fitted"))


def fitted_profile_path(hardware: str) -> Path | None:
    """The shipped fitted profile of a hardware preset, or None when there is none."""
    path = _fitted_dir() / f"{hardware}.json"
    return path if path.is_file() else None


def load_fitted_profile(path: str | Path) -> FittedProfile:
    data = read_json(Path(path))
    where = str(path)
    if data.get("format") != FORMAT or data.get("version") != VERSION:
        raise CostModelError(f"{where}: field 'format'/'version' = {data.get('format')!r}/{data.get('version')!r}: "
                             f"expected {FORMAT!r}/{VERSION}")
    for key in ("hardware", "command"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise CostModelError(f"{where}: field '{key}' must be a non-empty string")
    if not isinstance(data.get("rates"), dict):
        raise CostModelError(f"{where}: field 'rates' must be an object")
    fitted, derived = data.get("fitted", []), data.get("derived", {})
    if not isinstance(fitted, list) or not isinstance(derived, dict):
        raise CostModelError(f"{where}: fields 'fitted' (list) and 'derived' (object) are required")
    return FittedProfile(hardware=data["hardware"], rates=FittedRates.from_dict(data["rates"], where),
                         fitted=tuple(fitted), derived=dict(derived), command=data["command"], path=where)


def write_fitted_profile(path: str | Path, hardware: str, rates: FittedRates, fitted: list[str],
                         derived: dict, command: str, extra: dict | None = None) -> None:
    """Write a profile atomically (validated by reading it back from the text first)."""
    data = {"format": FORMAT, "version": VERSION, "hardware": hardware, "command": command,
            "fitted": list(fitted), "derived": dict(derived), "rates": rates.to_dict(), **(extra or {})}
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    try:
        load_fitted_profile(tmp)
    except CostModelError:
        tmp.unlink()
        raise
    tmp.replace(path)
