"""Capacity under latency targets: per policy and seed, the highest arrival rate that meets the SLOs.

The search is made well posed in four ways:

    common random numbers  every probe of one seed replays the same request stream (lengths, trace
                           mapping) and the same unit-rate arrivals scaled by 1/rate (workload.py),
                           so the measured latencies are close to monotone in the rate
    fixed request count    every probe simulates `requests` requests; the first `warmup` share (by
                           arrival order) is discarded, and so is the last OPEN_LOOP_TRIM share,
                           which arrives while the system drains and would look better than steady
                           state; the SLO percentiles are taken over the requests in between
    instability test       a probe whose waiting queue keeps growing over that window fails even if
                           its percentiles pass (a finite run can hide an overloaded server):
                           the least-squares slope of the waiting-queue length, sampled at every
                           measured arrival, ÷ the arrival rate must stay <= UNSTABLE_GROWTH
    bracket, then bisect   start at `start`, double until a probe fails (halve until one passes),
                           then bisect geometrically until failing / passing - 1 <= tolerance;
                           the result is the bracket [highest passing, lowest failing]

Replayed arrivals (arrival="replay") are searched as a time-scale factor on the real timestamps
(factor 2 = twice as fast as the recorded trace); the report gives the equivalent mean rate.

Every probe is one `measure(probe)` call (a pure function of the probe: any executor can run it);
the searches advance in lockstep rounds, one probe per unfinished search per round.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import pandas as pd

from echo_sim.config import SimConfig
from echo_sim.metrics import OPEN_LOOP_TRIM, latency_percentiles
from echo_sim.slo import Target, format_slo, headroom

UNSTABLE_GROWTH = 0.05  # queue absorbing > 5 % of the window's arrivals: service is >= 5 % short
DEFAULT_WARMUP = 0.2
DEFAULT_TOLERANCE = 0.02
DEFAULT_START = 16.0  # req/s (or time-scale factor): the bracket grows from here by doubling


class CapacityError(ValueError):
    """Impossible search settings; the message names the option and value."""


@dataclass(frozen=True)
class Probe:
    """One simulation of the search: a config at one load. What it measures does not depend on the
    SLOs (the driver judges it), so searches under other SLOs reuse its point file."""

    config: SimConfig
    warmup: float
    load: float  # what the search moves: the rate (Poisson) or the time-scale factor (replay)

    def identity(self) -> dict:
        return {"config": asdict(self.config), "warmup": self.warmup, "load": self.load}

    @property
    def key(self) -> str:
        text = json.dumps(self.identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def measured_range(count: int, warmup: float) -> tuple[int, int]:
    """Request indices [first, end) whose latencies count: warm-up and drain discarded."""
    first, end = int(math.ceil(warmup * count)), count - int(round(OPEN_LOOP_TRIM * count))
    if end - first < 2:
        raise CapacityError(f"--requests {count} with --warmup {warmup}: fewer than 2 requests are measured")
    return first, end


def queue_growth(requests: pd.DataFrame, first: int, end: int) -> float:
    """Slope of the waiting-queue length over the measured arrivals ÷ their arrival rate.

    At each measured arrival time t: waiting = requests arrived by t − requests admitted by t.
    0 for a stable server; the share of arrivals that pile up for an overloaded one.
    """
    arrival = requests["arrival"].to_numpy()
    admitted = np.sort(requests["admitted"].to_numpy())
    times = arrival[first:end]
    waiting = np.arange(first + 1, end + 1) - np.searchsorted(admitted, times, side="right")
    span = times[-1] - times[0]
    if span <= 0:
        return 0.0
    slope = np.polyfit(times - times[0], waiting, 1)[0]
    return float(slope / ((end - first - 1) / span))


def measure(probe: Probe, trace=None, cost=None) -> dict:
    """Simulate one probe: its identity, the measured-window latencies and the queue growth."""
    from echo_sim.engine import build_simulation

    simulation = build_simulation(probe.config, trace, cost=cost).run()
    result = simulation.result()
    requests, steps = result.requests, simulation.steps.frame()
    first, end = measured_range(len(requests), probe.warmup)
    arrival = requests["arrival"].to_numpy()
    window = requests.iloc[first:end]
    seen = steps[(steps["batch_size"] > 0) & (steps["end"] > arrival[first])
                 & (steps["start"] < window["finish"].max())]
    identity = {k: result.metrics[k] for k in ("policy", "workload", "seed", "arrival", "requests", "hardware",
                                               "model", "max_batch", "kv_capacity_tokens", "prefill_chunk",
                                               "acceptance_source", "cost_source")}
    return {
        **identity, **latency_percentiles(window, seen), "key": probe.key, "load": probe.load,
        "rate": probe.config.rate, "measured_requests": end - first,
        "queue_growth": queue_growth(requests, first, end),
        "output_tokens_per_s": result.metrics["output_tokens_per_s"], **probe.identity(),
    }


@dataclass
class Search:
    """The bracket of one (policy, seed): highest passing and lowest failing load seen so far."""

    policy: str
    seed: int
    start: float
    tolerance: float
    min_load: float
    max_load: float
    passing: float | None = None
    failing: float | None = None
    failing_reason: str = ""
    probes: list = field(default_factory=list)

    def next_load(self) -> float | None:
        """The next load to probe, or None when the search is over."""
        if self.passing is None and self.failing is None:
            return self.start
        if self.failing is None:
            nxt = self.passing * 2
            return nxt if nxt <= self.max_load else None
        if self.passing is None:
            nxt = self.failing / 2
            return nxt if nxt >= self.min_load else None
        if self.failing / self.passing - 1 <= self.tolerance:
            return None
        return math.sqrt(self.passing * self.failing)

    def observe(self, record: dict) -> None:
        self.probes.append(record)
        load = record["load"]
        if not record["limiting"]:
            self.passing = max(self.passing or load, load)
        elif self.failing is None or load < self.failing:
            self.failing, self.failing_reason = load, record["limiting"]


def judge(record: dict, targets: tuple[Target, ...]) -> dict:
    """The record plus the verdict: headroom (max value/bound), limiting (targets missed and
    "unstable"; empty = passed)."""
    limiting = [t.field for t in targets if not record[t.field] <= t.limit_s]
    if record["queue_growth"] > UNSTABLE_GROWTH:
        limiting.append("unstable")
    return {**record, "slo": format_slo(targets), "headroom": headroom(record, targets),
            "passed": not limiting, "limiting": ",".join(limiting)}


def native_replay_rate(workload: str, requests: int) -> float:
    """Mean arrival rate of the first `requests` replayed arrivals at their recorded speed."""
    from echo_sim.workload import read_workload, replay_arrivals

    times = replay_arrivals(read_workload(workload)["arrival"].to_numpy(), requests, None)
    return (requests - 1) / float(times[-1])


def probe_config(base: SimConfig, policy: str, seed: int, load: float, native_rate: float | None) -> SimConfig:
    rate = load if native_rate is None else load * native_rate
    return replace(base, policy=policy, seed=seed, rate=rate, concurrency=None, step_log=False)


def check_settings(base: SimConfig, warmup: float, tolerance: float, start: float) -> None:
    if not 0 <= warmup < 1:
        raise CapacityError(f"--warmup must be in [0, 1), got {warmup}")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise CapacityError(f"--tolerance must be a positive number, got {tolerance}")
    if not (math.isfinite(start) and start > 0):
        raise CapacityError(f"--start must be a positive number, got {start}")
    measured_range(base.requests, warmup)


Evaluate = Callable[[list[Probe]], list[dict]]


def search_capacity(base: SimConfig, policies: list[str], seeds: list[int], targets: tuple[Target, ...],
                    evaluate: Evaluate, *, warmup: float = DEFAULT_WARMUP, tolerance: float = DEFAULT_TOLERANCE,
                    start: float = DEFAULT_START, min_load: float | None = None,
                    max_load: float | None = None) -> tuple[list[Search], float | None]:
    """Run every (policy, seed) search to its bracket; returns them and the replay's native rate."""
    check_settings(base, warmup, tolerance, start)
    native_rate = native_replay_rate(base.workload, base.requests) if base.arrival == "replay" else None
    low, high = min_load or start / 2 ** 10, max_load or start * 2 ** 10
    searches = [Search(policy, seed, start, tolerance, low, high) for policy in policies for seed in seeds]
    while True:
        pending = [(search, load) for search in searches if (load := search.next_load()) is not None]
        if not pending:
            return searches, native_rate
        probes = [Probe(probe_config(base, s.policy, s.seed, load, native_rate), warmup, load)
                  for s, load in pending]
        for (search, _), record in zip(pending, evaluate(probes)):
            search.observe(judge(record, targets))


def capacity_table(searches: list[Search], native_rate: float | None) -> pd.DataFrame:
    """One row per (policy, seed): bracket in load units and in equivalent mean rate."""
    scale = native_rate or 1.0
    rows = []
    for s in searches:
        label = s.probes[0]["policy"] if s.probes else s.policy
        rows.append({
            "policy": label, "spec": s.policy, "seed": s.seed,
            "capacity": (s.passing or 0.0) * scale, "passing": s.passing * scale if s.passing else float("nan"),
            "failing": s.failing * scale if s.failing else float("nan"),
            "failing_on": s.failing_reason, "probes": len(s.probes),
            "time_scale": s.passing if native_rate and s.passing else float("nan"),
        })
    return pd.DataFrame(rows)


def per_policy(table: pd.DataFrame) -> pd.DataFrame:
    """Mean capacity over seeds, the seed spread (max − min) and the widest bracket, per policy."""
    grouped = table.groupby(["policy", "spec"], sort=False)
    out = grouped.agg(capacity=("capacity", "mean"), low=("capacity", "min"), high=("capacity", "max"),
                      passing=("passing", "min"), failing=("failing", "max"),
                      time_scale=("time_scale", "mean"),
                      failing_on=("failing_on", lambda v: ",".join(sorted({r for x in v for r in x.split(",") if r}))))
    out["spread"] = out["high"] - out["low"]
    return out.reset_index().sort_values("capacity", ascending=False, kind="stable").reset_index(drop=True)
