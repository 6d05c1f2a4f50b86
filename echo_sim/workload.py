"""Request streams: how many tokens each simulated request asks for, and when it arrives.

A stream fixes, for the N requests in the order clients send them, the prompt length, the output
length, the acceptance-trace request whose acceptance history it replays, and (open loop) the
arrival time. Everything derives from the seed alone (never from the policy), so every policy of a
sweep point sees the identical stream and speedups compare like with like.

Loads (SimConfig.arrival_mode):
    closed    N concurrent clients with zero think time: a client sends its next request the moment
              its previous one finishes (arrival times are decided by the engine, not here)
    poisson   open loop: exponential inter-arrival gaps at `rate` requests/s (one unit-rate gap
              sequence per seed, scaled by 1/rate: common random numbers across rates)
    replay    open loop: the real arrival times of an Azure LLM-inference trace (file order, rebased
              to 0; with `rate`, rescaled to that mean rate); past the file's end it repeats, shifted
Lengths (workload name):
    trace     the acceptance trace's own prompt and output lengths (default)
    sharegpt, azure-conv, azure-code, arxiv, bwb   real length distributions (traces/workloads/)
Sampling is balanced: rows are drawn as successive seeded permutations, so every file row (and
every trace request) is used once before any is used twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from echo_sim.paths import TRACES_DIR

WORKLOADS_DIR = TRACES_DIR / "workloads"


@dataclass(frozen=True)
class WorkloadFile:
    file: str
    prompt_column: str
    output_column: str
    time_column: str | None = None  # real arrival timestamps, when the file has them


WORKLOAD_FILES = {
    "sharegpt": WorkloadFile("sharegpt_8k_filtered_stats_llama2_tokenizer.csv",
                             "num_prefill_tokens", "num_decode_tokens"),
    "azure-conv": WorkloadFile("AzureLLMInferenceTrace_conv.csv", "ContextTokens", "GeneratedTokens", "TIMESTAMP"),
    "azure-code": WorkloadFile("AzureLLMInferenceTrace_code.csv", "ContextTokens", "GeneratedTokens", "TIMESTAMP"),
    "arxiv": WorkloadFile("arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
                          "num_prefill_tokens", "num_decode_tokens"),
    "bwb": WorkloadFile("bwb_stats_llama2_tokenizer_filtered_v2.csv", "num_prefill_tokens", "num_decode_tokens"),
}
WORKLOAD_NAMES = ("trace", *WORKLOAD_FILES)
# Independent random streams per purpose, all from the one seed.
_LENGTHS, _TRACE_MAP, _ARRIVALS = 1, 2, 3


class WorkloadError(ValueError):
    """Unknown workload, malformed workload file or impossible load; names the file, row, field."""


@dataclass(frozen=True)
class RequestStream:
    """N simulated requests in the order they are sent.

    Shape (N requests):
        prompt_len     int64 [N]    prompt tokens (prefilled in chunks)
        output_len     int64 [N]    output tokens L, y_0 included (y_0 is committed by prefill)
        trace_request  int64 [N]    acceptance-trace request it replays (positions cycle mod its length)
        arrival        float64 [N]  seconds, non-decreasing; None in closed loop
    """

    workload: str
    prompt_len: np.ndarray
    output_len: np.ndarray
    trace_request: np.ndarray
    arrival: np.ndarray | None = None

    @property
    def num_requests(self) -> int:
        return len(self.output_len)


def check_workload_name(name: str) -> None:
    if name not in WORKLOAD_NAMES:
        raise WorkloadError(f"workload: unknown name {name!r}; known: {', '.join(WORKLOAD_NAMES)}")


def check_replayable(name: str) -> None:
    check_workload_name(name)
    if name == "trace" or WORKLOAD_FILES[name].time_column is None:
        timed = [n for n, f in WORKLOAD_FILES.items() if f.time_column]
        raise WorkloadError(f"workload {name!r} has no arrival times to replay; use one of {', '.join(timed)}")


def balanced_draw(rng: np.random.Generator, population: int, count: int) -> np.ndarray:
    """int64 [count]: successive random permutations of range(population), concatenated and cut."""
    rounds = -(-count // population)
    return np.concatenate([rng.permutation(population) for _ in range(rounds)])[:count]


def read_workload(name: str, directory: Path | None = None) -> pd.DataFrame:
    """Columns prompt_len, output_len (int64) and arrival (float64 s from the first row, or absent)."""
    check_workload_name(name)
    spec = WORKLOAD_FILES[name]
    path = (directory or WORKLOADS_DIR) / spec.file
    if not path.is_file():
        raise WorkloadError(f"workload {name!r}: file not found: {path}")
    try:
        raw = pd.read_csv(path, encoding="utf-8")
    except UnicodeDecodeError as error:
        raise WorkloadError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except pd.errors.EmptyDataError:
        raise WorkloadError(f"{path}: empty file (expected a CSV header and rows)") from None
    except (pd.errors.ParserError, ValueError, OverflowError) as error:
        raise WorkloadError(f"{path}: not a readable CSV ({error})") from None
    if raw.empty:
        raise WorkloadError(f"{path}: header but no rows")
    table = pd.DataFrame({
        "prompt_len": _token_counts(raw, spec.prompt_column, path),
        "output_len": _token_counts(raw, spec.output_column, path),
    })
    if spec.time_column:
        table["arrival"] = _arrival_seconds(raw, spec.time_column, path)
    return table


def _token_counts(raw: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    if column not in raw:
        raise WorkloadError(f"{path}: missing column {column!r} (has {', '.join(map(str, raw.columns))})")
    values = pd.to_numeric(raw[column], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values < 1) | (values != np.round(values))
    if bad.any():
        row = int(np.argmax(bad))
        raise WorkloadError(f"{path}: row {row + 2}, field {column}: not a token count >= 1 "
                            f"(got {raw[column].iloc[row]!r})")
    return values.astype(np.int64)


def _arrival_seconds(raw: pd.DataFrame, column: str, path: Path) -> np.ndarray:
    if column not in raw:
        raise WorkloadError(f"{path}: missing column {column!r}")
    stamps = pd.to_datetime(raw[column], format="%Y-%m-%d %H:%M:%S.%f", errors="coerce")
    if stamps.isna().any():
        row = int(np.argmax(stamps.isna().to_numpy()))
        raise WorkloadError(f"{path}: row {row + 2}, field {column}: not a timestamp "
                            f"(got {raw[column].iloc[row]!r})")
    seconds = (stamps - stamps.iloc[0]).dt.total_seconds().to_numpy(dtype=np.float64)
    if np.any(np.diff(seconds) < 0):
        row = int(np.argmax(np.diff(seconds) < 0)) + 1
        raise WorkloadError(f"{path}: row {row + 2}, field {column}: arrival times go backwards")
    return seconds


def poisson_arrivals(rng: np.random.Generator, count: int, rate: float) -> np.ndarray:
    """float64 [count]: arrival times of a Poisson process at `rate` requests/s (first gap included).

    Common random numbers: the seed fixes one unit-rate gap sequence and every rate scales it by
    1/rate, so two rates of one seed see the same arrivals compressed in time (the capacity search
    relies on it: its metrics are then close to monotone in rate). Bit-identical to numpy's
    `rng.exponential(1 / rate)`, which scales the same standard-exponential draws.
    """
    unit_gaps = rng.standard_exponential(count)
    return np.cumsum(unit_gaps * (1.0 / rate))


def replay_arrivals(seconds: np.ndarray, count: int, rate: float | None) -> np.ndarray:
    """float64 [count]: the file's arrival times, repeated past its end; rescaled to `rate` if given.

    A repeat starts one mean gap after the previous copy ends, so gaps stay real.
    """
    span = float(seconds[-1] - seconds[0])
    mean_gap = span / max(len(seconds) - 1, 1)
    period = span + mean_gap
    rounds = -(-count // len(seconds))
    times = np.concatenate([seconds - seconds[0] + i * period for i in range(rounds)])[:count]
    if rate is not None and count > 1 and times[-1] > 0:
        times = times * ((count - 1) / rate / times[-1])
    return times


def build_stream(
    workload: str,
    requests: int,
    seed: int,
    trace_prompt_len: np.ndarray,
    trace_output_len: np.ndarray,
    arrival_mode: str = "closed",
    rate: float | None = None,
    directory: Path | None = None,
) -> RequestStream:
    """The request stream of one simulation (see the module docstring for the modes)."""
    check_workload_name(workload)
    if requests <= 0:
        raise WorkloadError(f"requests: must be positive, got {requests}")
    if rate is not None and not (np.isfinite(rate) and rate > 0):
        raise WorkloadError(f"rate: must be a positive finite number, got {rate!r}")
    num_trace = len(trace_output_len)
    if num_trace == 0:
        raise WorkloadError("the acceptance trace has no requests to map onto")
    trace_request = balanced_draw(np.random.default_rng([seed, _TRACE_MAP]), num_trace, requests)
    if workload == "trace":
        if arrival_mode == "replay":
            check_replayable(workload)
        prompt = np.asarray(trace_prompt_len, dtype=np.int64)[trace_request]
        output = np.asarray(trace_output_len, dtype=np.int64)[trace_request]
        arrival = _open_loop_arrivals(arrival_mode, seed, requests, rate)
        return RequestStream(workload, prompt, output, trace_request, arrival)
    table = read_workload(workload, directory)
    if arrival_mode == "replay":
        check_replayable(workload)
        rows = np.arange(requests) % len(table)  # keep each real arrival with its own lengths
        arrival = replay_arrivals(table["arrival"].to_numpy(), requests, rate)
    else:
        rows = balanced_draw(np.random.default_rng([seed, _LENGTHS]), len(table), requests)
        arrival = _open_loop_arrivals(arrival_mode, seed, requests, rate)
    prompt = table["prompt_len"].to_numpy()[rows]
    output = table["output_len"].to_numpy()[rows]
    return RequestStream(workload, prompt, output, trace_request, arrival)


def _open_loop_arrivals(mode: str, seed: int, requests: int, rate: float | None) -> np.ndarray | None:
    if mode == "closed":
        return None
    if mode != "poisson":
        raise WorkloadError(f"arrival: unknown mode {mode!r}; known: closed, poisson, replay")
    if rate is None:
        raise WorkloadError("arrival 'poisson' needs a rate")
    return poisson_arrivals(np.random.default_rng([seed, _ARRIVALS]), requests, rate)
