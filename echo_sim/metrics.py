"""Records of one simulation and the measures every policy reports (POLICIES.md, last section).

The engine fills two records: a lifecycle per request (RequestLog) and one row per engine step
(StepLog). `compute_metrics` turns them into the plain dict that `echo-sim run --json` prints:

    output_tokens_per_s   steady state: decode tokens committed by steps that end after the C-th and
                          no later than the (N−C)-th request completion, ÷ that interval (C =
                          concurrency, or 10 % of N in open loop). Fallback when N ≤ 2C (or the
                          interval is empty): the makespan rate of decode tokens; `steady_state`
                          says which one was used.
    makespan_tokens_per_s all output tokens (y_0 included) ÷ (last completion − first arrival)
    requests_per_s        completions inside the same window ÷ interval (makespan_requests_per_s too)
    mean_accepted_tokens  MAT: committed decode tokens ÷ request-steps (bonus included; ar = 1)
    verified_tokens_per_step   mean V over decode steps, roots and bucket padding included
    waste                 verified draft nodes not accepted ÷ verified draft nodes (0 without drafts;
                          bucket padding is not a draft node and is reported as padding_per_step)
    draft_time_share      Σ draft time ÷ Σ step time
    ttft, tpot, itl, e2e  p50/p90/p99 in seconds. TPOT per request (output ≥ 2 tokens):
                          (finish − first token) ÷ (tokens − 1). ITL: the step durations a decoding
                          request sees, one per request-step (weighted percentiles, inverted CDF).
    oracle_gap_per_step   mean over request-steps of (oracle's accepted depth − accepted depth) at
                          the same lattice position and drafted depth; oracle_accepted_depth likewise.
                          The oracle is the lattice's on-path depth: chains replay the spine, which
                          the lattice's beam may have pruned, so a chain step can beat it (gap < 0)
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from echo_sim.step import STEP_DTYPES, STEP_FIELDS, StepRecord, step_frame, step_row
from echo_sim.trees import LatticeBatch

PERCENTILES = (50, 90, 99)
LATENCY_METRICS = ("ttft", "tpot", "itl", "e2e")
OPEN_LOOP_TRIM = 0.10  # open loop: completions trimmed at each end of the steady-state window
REQUEST_DETAIL_FIELDS = ("requests", "selected_depth", "selected_width", "accepted_depth", "oracle_depth_r")
STEP_BLOCK = 4096  # steps per block of the step log
COUNTERS = ("decode_steps", "decode_tokens", "accepted_draft", "verified_draft", "oracle_depth")  # RequestLog


@dataclass
class RequestLog:
    """Lifecycle of the N simulated requests (index = request id, the order they are sent).

    Shape: every array [N]. Times in simulated seconds (NaN until the event happens).
        arrival, admitted, first_token, finish   float64
        decode_steps     int64  engine steps the request decoded in (request-steps)
        decode_tokens    int64  tokens committed by those steps (output_len − 1 when finished)
        accepted_draft   int64  Σ accepted depth a (draft tokens accepted, bonus excluded)
        verified_draft   int64  Σ n_r, draft nodes verified for it
        oracle_depth     int64  Σ oracle's accepted depth at the same positions
    """

    prompt_len: np.ndarray
    output_len: np.ndarray
    trace_request: np.ndarray
    arrival: np.ndarray = field(init=False)
    admitted: np.ndarray = field(init=False)
    first_token: np.ndarray = field(init=False)
    finish: np.ndarray = field(init=False)
    decode_steps: np.ndarray = field(init=False)
    decode_tokens: np.ndarray = field(init=False)
    accepted_draft: np.ndarray = field(init=False)
    verified_draft: np.ndarray = field(init=False)
    oracle_depth: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.output_len)
        for name in ("arrival", "admitted", "first_token", "finish"):
            setattr(self, name, np.full(n, np.nan))
        self._counters = np.zeros((len(COUNTERS), n), dtype=np.int64)  # the COUNTERS fields are its rows
        for name, row in zip(COUNTERS, self._counters):
            setattr(self, name, row)

    def count(self, requests: np.ndarray, counters: np.ndarray) -> None:
        """Add `counters` (int64 [len(COUNTERS), k], COUNTERS order) to the `requests` (k distinct ids)."""
        self._counters[:, requests] += counters

    def frame(self) -> pd.DataFrame:
        table = pd.DataFrame({name: getattr(self, name) for name in self.__dataclass_fields__})
        table.insert(0, "request", np.arange(len(table)))
        return table


@dataclass
class StepLog:
    """One StepRecord per engine step (echo_sim.step), stored as rows of float64 blocks (every
    field is a float, a bool or an integer below 2**53, exact in float64) instead of objects, so
    that a long run's log stays small: the newest rows wait as tuples until a block's worth is
    converted in one call (a row assignment per step costs more than the conversion); with
    `detail`, per-request lists (REQUEST_DETAIL_FIELDS, batch row order) and the step-time
    components of every step."""

    detail: bool = False
    details: list = field(default_factory=list)
    components: list = field(default_factory=list)
    _blocks: list = field(default_factory=list, repr=False)  # float64 [STEP_BLOCK, len(STEP_FIELDS)] each
    _pending: list = field(default_factory=list, repr=False)  # step_row tuples of the newest steps

    def append(self, record: StepRecord) -> None:
        self._pending.append(step_row(record))
        if len(self._pending) == STEP_BLOCK:
            self._blocks.append(_rows_of(self._pending))
            self._pending = []

    def __len__(self) -> int:
        return len(self._blocks) * STEP_BLOCK + len(self._pending)

    def columns(self) -> dict[str, np.ndarray]:
        """STEP_FIELDS name -> [steps], each in its StepRecord type (float64, int64 or bool)."""
        rows = np.concatenate([*self._blocks, _rows_of(self._pending)])
        return {name: rows[:, i].astype(STEP_DTYPES[name]) for i, name in enumerate(STEP_FIELDS)}

    @property
    def records(self) -> list[StepRecord]:
        """The steps as StepRecord objects (rebuilt from the columns: for callers that want objects)."""
        values = [column.tolist() for column in self.columns().values()]
        return [StepRecord(*row) for row in zip(*values)]

    def frame(self) -> pd.DataFrame:
        """step_frame of the records: the same columns, dtypes and values."""
        if len(self) == 0:
            table = step_frame([])
        else:
            table = pd.DataFrame(self.columns())
            table.insert(0, "step", np.arange(len(table)))
        if self.detail:
            for index, name in enumerate(REQUEST_DETAIL_FIELDS):
                table[name] = [entry[index] for entry in self.details]
            parts = pd.DataFrame.from_records(self.components).add_prefix("time_")
            table = pd.concat([table, parts.set_index(table.index)], axis=1)
        return table


def _rows_of(rows: list[tuple]) -> np.ndarray:
    """float64 [len(rows), len(STEP_FIELDS)] of step_row tuples (one conversion for all of them)."""
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=len(rows) * len(STEP_FIELDS))
    return flat.reshape(len(rows), len(STEP_FIELDS))


def percentiles(values: np.ndarray, prefix: str, weights: np.ndarray | None = None) -> dict:
    """{prefix_p50: …, prefix_p90: …, prefix_p99: …}; NaN when there are no values."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0 or (weights is not None and np.sum(weights) == 0):
        return {f"{prefix}_p{q}": float("nan") for q in PERCENTILES}
    if weights is None:
        result = np.percentile(values, PERCENTILES)
    else:
        result = np.percentile(values, PERCENTILES, weights=weights, method="inverted_cdf")
    return {f"{prefix}_p{q}": float(v) for q, v in zip(PERCENTILES, result)}


def steady_state_window(finish: np.ndarray, trim: int) -> tuple[float, float] | None:
    """(t0, t1]: from the trim-th to the (N − trim)-th completion; None when that is empty."""
    times = np.sort(finish)
    n = len(times)
    if trim < 1 or n - trim <= trim:
        return None
    start, end = float(times[trim - 1]), float(times[n - trim - 1])
    return (start, end) if end > start else None


def throughput(requests: pd.DataFrame, steps: pd.DataFrame, trim: int) -> dict:
    finish = requests["finish"].to_numpy()
    makespan = float(np.max(finish) - np.min(requests["arrival"].to_numpy()))
    decode_tokens = float(requests["decode_tokens"].sum())
    window = steady_state_window(finish, trim)
    out = {
        "makespan_s": makespan,
        "makespan_tokens_per_s": float(requests["output_len"].sum()) / makespan,
        "makespan_requests_per_s": len(requests) / makespan,
        "steady_state": window is not None,
    }
    if window is None:
        out.update(output_tokens_per_s=decode_tokens / makespan, requests_per_s=len(requests) / makespan,
                   window_start_s=float("nan"), window_end_s=float("nan"))
        return out
    start, end = window
    in_window = (steps["end"] > start) & (steps["end"] <= end)
    completed = int(np.sum((finish > start) & (finish <= end)))
    out.update(output_tokens_per_s=float(steps.loc[in_window, "committed"].sum()) / (end - start),
               requests_per_s=completed / (end - start), window_start_s=start, window_end_s=end)
    return out


def _ratio(numerator: float, denominator: float, empty: float) -> float:
    return float(numerator) / float(denominator) if denominator else empty


def compute_metrics(requests: pd.DataFrame, steps: pd.DataFrame, concurrency: int | None) -> dict:
    """The measures of one finished simulation (module docstring); `requests` and `steps` are the
    RequestLog and StepLog frames. `concurrency` None means open loop."""
    n = len(requests)
    trim = concurrency if concurrency is not None else int(round(OPEN_LOOP_TRIM * n))
    decode = steps[steps["batch_size"] > 0]
    request_steps = requests["decode_steps"].sum()
    verified = requests["verified_draft"].sum()
    accepted = requests["accepted_draft"].sum()
    metrics = throughput(requests, steps, trim)
    metrics.update(
        mean_accepted_tokens=_ratio(requests["decode_tokens"].sum(), request_steps, float("nan")),
        verified_tokens_per_step=_ratio(decode["verify_tokens"].sum(), len(decode), float("nan")),
        padding_per_step=_ratio(decode["padding"].sum(), len(decode), 0.0),
        mean_batch_size=_ratio(decode["batch_size"].sum(), len(decode), 0.0),
        waste=_ratio(verified - accepted, verified, 0.0),
        draft_time_share=_ratio(steps["draft_time"].sum(), (steps["end"] - steps["start"]).sum(), 0.0),
        oracle_accepted_depth=_ratio(requests["oracle_depth"].sum(), request_steps, float("nan")),
        oracle_gap_per_step=_ratio(requests["oracle_depth"].sum() - accepted, request_steps, float("nan")),
        steps=len(steps),
        simulated_seconds=float(steps["end"].max()) if len(steps) else 0.0,
    )
    metrics.update(latency_percentiles(requests, decode))
    return metrics


def request_latencies(requests: pd.DataFrame) -> pd.DataFrame:
    """Per request: ttft, tpot (NaN for one-token outputs) and e2e, seconds (RequestLog frame rows)."""
    multi = requests["output_len"] >= 2
    tpot = (requests["finish"] - requests["first_token"]) / (requests["output_len"] - 1)
    return pd.DataFrame({"ttft": requests["first_token"] - requests["arrival"],
                         "tpot": tpot.where(multi), "e2e": requests["finish"] - requests["arrival"]})


def latency_percentiles(requests: pd.DataFrame, decode_steps: pd.DataFrame) -> dict:
    """The twelve LATENCY_METRICS x PERCENTILES fields of `requests` and the decode steps they saw."""
    own = request_latencies(requests)
    itl = (decode_steps["end"] - decode_steps["start"]).to_numpy()
    out = {}
    out.update(percentiles(own["ttft"].to_numpy(), "ttft"))
    out.update(percentiles(own["tpot"].dropna().to_numpy(), "tpot"))
    out.update(percentiles(itl, "itl", weights=decode_steps["batch_size"].to_numpy()))
    out.update(percentiles(own["e2e"].to_numpy(), "e2e"))
    return out


def selected_extent(lattices: LatticeBatch, selection) -> tuple[np.ndarray, np.ndarray]:
    """(depth, width) int64 [bs]: deepest selected level and most nodes selected on one level."""
    bs = lattices.batch_size
    if selection.chain is not None:
        chain = np.asarray(selection.chain, dtype=np.int64)
        return chain, (chain > 0).astype(np.int64)
    rows = lattices.request_of_node()[selection.nodes]
    levels = lattices.depth[selection.nodes].astype(np.int64)
    depth = np.zeros(bs, dtype=np.int64)
    np.maximum.at(depth, rows, levels)
    span = int(levels.max()) + 1 if len(levels) else 1
    per_level = np.bincount(rows * span + levels, minlength=bs * span).reshape(bs, span)
    return depth, per_level.max(axis=1)
