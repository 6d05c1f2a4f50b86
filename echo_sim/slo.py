"""Latency targets (SLOs): parsing `ttft_p90=1s,tpot_p99=50ms`, and whether a result meets them.

A target bounds one of the twelve latency percentiles every simulation reports (metrics.py:
ttft, tpot, itl, e2e at p50/p90/p99, in seconds). Two readings of "meets the SLOs":

    meets(metrics)      every named percentile is within its bound (NaN fails): the capacity
                        search's pass test and the sweep's "meets all" flag
    attainment(reqs)    DistServe's SLO attainment: the share of requests whose own TTFT, TPOT and
                        end-to-end latency are all within the bounds of the targets on those metrics
                        (ITL is a per-step measure with no per-request value, so it counts only in
                        `meets`); SLO goodput = completed requests/s x attainment
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from echo_sim.metrics import LATENCY_METRICS, PERCENTILES, request_latencies

UNITS = {"s": 1.0, "ms": 1e-3}
LATENCY_FIELDS = tuple(f"{metric}_p{q}" for metric in LATENCY_METRICS for q in PERCENTILES)
_ITEM = re.compile(r"^\s*([a-z0-9]+_p[0-9]+)\s*(?:<=|=)\s*([0-9.eE+-]+)\s*([a-z]*)\s*$")


class SLOError(ValueError):
    """A malformed --slo; the message names the item."""


@dataclass(frozen=True)
class Target:
    field: str      # one of LATENCY_FIELDS, e.g. "tpot_p99"
    limit_s: float  # the bound, seconds

    @property
    def metric(self) -> str:
        return self.field.split("_p")[0]

    def __str__(self) -> str:
        shown = f"{self.limit_s * 1e3:g}ms" if self.limit_s < 1 else f"{self.limit_s:g}s"
        return f"{self.field}<={shown}"


def parse_slo(text: str) -> tuple[Target, ...]:
    """`ttft_p90=1s,tpot_p99=50ms` -> targets, in the order given (a unit, s or ms, is required)."""
    targets = []
    for item in (part for part in text.split(",") if part.strip()):
        match = _ITEM.match(item.lower())
        if not match:
            raise SLOError(f"--slo: cannot parse {item.strip()!r}; expected METRIC_pQ=VALUE UNIT, "
                           f"e.g. tpot_p99=50ms")
        field, number, unit = match.groups()
        if field not in LATENCY_FIELDS:
            raise SLOError(f"--slo: unknown latency {field!r} in {item.strip()!r}; known: {', '.join(LATENCY_FIELDS)}")
        if unit not in UNITS:
            raise SLOError(f"--slo: {item.strip()!r} needs a unit, one of {', '.join(UNITS)} (got {unit!r})")
        try:
            value = float(number) * UNITS[unit]
        except ValueError:
            raise SLOError(f"--slo: {item.strip()!r}: {number!r} is not a number") from None
        if not (math.isfinite(value) and value > 0):
            raise SLOError(f"--slo: {item.strip()!r}: the bound must be a positive finite time")
        if any(t.field == field for t in targets):
            raise SLOError(f"--slo: {field} given twice")
        targets.append(Target(field, value))
    if not targets:
        raise SLOError("--slo: no targets given")
    return tuple(targets)


def format_slo(targets: tuple[Target, ...]) -> str:
    return ", ".join(map(str, targets))


def headroom(metrics: dict, targets: tuple[Target, ...]) -> float:
    """max over targets of value / bound: <= 1 meets every target; NaN values count as infinite."""
    ratios = [metrics.get(t.field, float("nan")) / t.limit_s for t in targets]
    return max(r if r == r else math.inf for r in ratios)


def meets(metrics: dict, targets: tuple[Target, ...]) -> bool:
    return headroom(metrics, targets) <= 1.0


def attainment(requests: pd.DataFrame, targets: tuple[Target, ...]) -> float:
    """Share of `requests` (RequestLog frame rows) meeting every per-request target."""
    if len(requests) == 0:
        return float("nan")
    own = request_latencies(requests)
    ok = np.ones(len(requests), dtype=bool)
    for target in targets:
        if target.metric in own:
            values = own[target.metric].to_numpy()
            ok &= ~(values > target.limit_s)  # a request without a TPOT (one token) is not held to it
    return float(np.mean(ok))
