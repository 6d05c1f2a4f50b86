"""SimConfig: everything one simulation needs, as a frozen, picklable value.

The sweep builds one SimConfig per grid point and calls `echo_sim.engine.simulate(config)` in a
worker process, so a config holds only plain values (names, numbers, paths as strings) and
constructing one does nothing: `validate()` checks it, `simulate()` calls `validate()` first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path

from echo_sim.paths import DEFAULT_TRACE_GLOB, TRACES_DIR

ARRIVAL_MODES = ("auto", "closed", "poisson", "replay")
# KV-cache tokens when the cost model gives none: Llama-3.1-8B on one H200. KV per token =
# 2 (K,V) x 32 layers x 8 KV heads x 128 dims x 2 bytes = 128 KiB; pool = 0.9 (SGLang-style static
# memory fraction) x 141 GB - 16.1 GB of bf16 weights ~ 110 GB -> ~840k tokens, rounded down.
DEFAULT_KV_CAPACITY_TOKENS = 800_000
# Prefill tokens per step when the cost model gives none: SGLang's --chunked-prefill-size default
# for GPUs with 35-160 GB (server_args.py: H100, H200, A100).
DEFAULT_PREFILL_CHUNK = 8192


class SimConfigError(ValueError):
    """An impossible or incomplete simulation config; the message names the field and value."""


@dataclass(frozen=True)
class SimConfig:
    """One simulation: a policy, a load, a workload, an acceptance trace and a step-time model.

    Defaults and where they come from:
        policy="echo"            the method under study (registry spec, e.g. "static:S=5,k=4,N=16")
        concurrency=None         closed loop: N clients, each sends its next request the moment the
                                 previous one finishes (zero think time): the x-axis of every curve
        rate=None                open loop: Poisson arrivals at this many requests/s (seeded); with
                                 arrival="replay", the real arrival times rescaled to this mean rate
        arrival="auto"           "closed" when concurrency is set, "poisson" when rate is set;
                                 "replay" replays the workload file's real arrival times (azure-*)
        requests=1000            enough completions for a steady-state window at concurrency 256
                                 (completions 256…744, metrics.py)
        trace=None               the shipped MT-Bench trace, traces/mt_bench*.trace.npz in the repo
        workload="trace"         prompt/output lengths of the acceptance trace's own requests; or a
                                 real length distribution (workload.WORKLOAD_NAMES)
        hardware=None, model=None   cost presets (COST_MODEL.md); None means h200 / llama-3.1-8b
                                 (the paper's setting) for the roofline, or whatever the
                                 calibration file says when one is given (a mismatch is an error)
        calibration=None         a calibration file replaces the presets (echo_sim.cost.model)
        cost=None                "fitted" or "roofline"; None: fitted where the hardware has a fitted
                                 profile (echo_sim/presets/fitted/: a100, h100, h200), else the
                                 roofline; must stay None with a calibration (it supersedes both)
        serving-engine knobs (echo_sim.cost.serving, docs/COST_MODEL.md; recorded in every result):
        prefill_mode="separate"  a prefill chunk as its own forward (SGLang's EAGLE path), or "mixed"
                                 into the verify forward
        verify_graphs="token-buckets"   graphs per token bucket, or "per-batch-size" (SGLang's
        graph_tokens=16          EAGLE verify graphs, graph_tokens per request)
        moe_routing="uniform"    or "gini:G": expert load concentration
        seed=0                   workload sampling, trace mapping and arrivals derive from it only
        max_batch=256            running requests (prefilling + decoding); vLLM's long-standing
                                 default max_num_seqs, and the top of the default sweep
        kv_capacity_tokens=None  KV-cache tokens; None: the cost model's (CostModel.kv_capacity_tokens:
                                 90 % of device memory minus weights, ÷ KV bytes per token; 866,725
                                 for h200 / llama-3.1-8b), else DEFAULT_KV_CAPACITY_TOKENS
        prefill_chunk=None       prompt tokens prefilled per step (in the same step as the decode
                                 batch, as prefill_mode says); None:
                                 the hardware preset's (CostModel.prefill_chunk_tokens, 8192 on h200 =
                                 SGLang's default --chunked-prefill-size for 35–160 GB GPUs), else
                                 DEFAULT_PREFILL_CHUNK
        step_log=False           keep per-step records (SimResult.steps) for notebooks
    """

    policy: str = "echo"
    concurrency: int | None = None
    rate: float | None = None
    arrival: str = "auto"
    requests: int = 1000
    trace: str | None = None
    workload: str = "trace"
    hardware: str | None = None
    model: str | None = None
    calibration: str | None = None
    cost: str | None = None
    prefill_mode: str = "separate"
    verify_graphs: str = "token-buckets"
    graph_tokens: int = 16
    moe_routing: str = "uniform"
    seed: int = 0
    max_batch: int = 256
    kv_capacity_tokens: int | None = None
    prefill_chunk: int | None = None
    step_log: bool = False

    @property
    def arrival_mode(self) -> str:
        """"closed", "poisson" or "replay" (resolves "auto")."""
        if self.arrival != "auto":
            return self.arrival
        return "poisson" if self.rate is not None and self.concurrency is None else "closed"

    def trace_path(self) -> Path:
        """The acceptance trace file: `trace`, or the shipped MT-Bench trace. Raises if missing."""
        if self.trace is not None:
            path = Path(self.trace)
            if not path.is_file():
                raise SimConfigError(f"trace: file not found: {self.trace}")
            return path
        shipped = sorted(TRACES_DIR.glob(DEFAULT_TRACE_GLOB))
        if not shipped:
            raise SimConfigError(
                f"trace: no shipped trace {TRACES_DIR / DEFAULT_TRACE_GLOB}; pass --trace PATH"
            )
        return shipped[0]

    def validate(self) -> "SimConfig":
        """Check every field (load included) and that the cost presets exist; returns self."""
        self.validate_load()
        self.validate_inputs()
        self.load_cost()  # raises CostModelError naming known presets, knobs, files
        return self

    def load_cost(self):
        """The step-time model this config names (presets or calibration, serving-engine knobs)."""
        from echo_sim.cost.model import load_cost_model
        from echo_sim.cost.serving import ServingKnobs

        knobs = ServingKnobs(self.prefill_mode, self.verify_graphs, self.graph_tokens, self.moe_routing)
        return load_cost_model(self.hardware, self.model, self.calibration, cost=self.cost, knobs=knobs)

    def validate_load(self) -> None:
        mode = self.arrival
        if mode not in ARRIVAL_MODES:
            raise SimConfigError(f"arrival: unknown mode {mode!r}; known: {', '.join(ARRIVAL_MODES)}")
        if self.concurrency is not None:
            _check_positive_int("concurrency", self.concurrency)
        if self.rate is not None:
            _check_positive_float("rate", self.rate)
        if mode == "auto" and (self.concurrency is None) == (self.rate is None):
            raise SimConfigError(
                "set exactly one of concurrency (closed loop) or rate (open loop); "
                f"got concurrency={self.concurrency}, rate={self.rate}"
            )
        if mode == "closed" and (self.concurrency is None or self.rate is not None):
            raise SimConfigError(f"arrival 'closed' needs concurrency and no rate; got concurrency="
                                 f"{self.concurrency}, rate={self.rate}")
        if mode == "poisson" and self.rate is None:
            raise SimConfigError("arrival 'poisson' needs rate")
        if mode in ("poisson", "replay") and self.concurrency is not None:
            raise SimConfigError(f"arrival {mode!r} is open loop: concurrency must be unset")

    def validate_inputs(self, need_trace_file: bool = True) -> None:
        """Everything but the load: sizes, names (workload, presets) and files (trace, calibration).

        need_trace_file=False when the caller supplies the TraceSet itself (tests, notebooks).
        """
        from echo_sim.workload import check_workload_name

        _check_positive_int("requests", self.requests)
        _check_positive_int("max_batch", self.max_batch)
        if self.prefill_chunk is not None:
            _check_positive_int("prefill_chunk", self.prefill_chunk)
        if self.kv_capacity_tokens is not None:
            _check_positive_int("kv_capacity_tokens", self.kv_capacity_tokens)
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise SimConfigError(f"seed: must be a non-negative integer, got {self.seed!r}")
        check_workload_name(self.workload)
        if self.arrival == "replay":
            from echo_sim.workload import check_replayable

            check_replayable(self.workload)
        if self.calibration is not None and not Path(self.calibration).is_file():
            raise SimConfigError(f"calibration: file not found: {self.calibration}")
        if need_trace_file:
            self.trace_path()


def config_defaults() -> dict:
    """Field name -> default value (the CLI shows these; it never restates them)."""
    return {f.name: f.default for f in fields(SimConfig)}


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SimConfigError(f"{name}: must be a positive integer, got {value!r}")


def _check_positive_float(name: str, value) -> None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SimConfigError(f"{name}: must be a positive number, got {value!r}") from None
    if not math.isfinite(number) or number <= 0:
        raise SimConfigError(f"{name}: must be a positive finite number, got {value!r}")


def resolved_limit(configured: int | None, cost, cost_attribute: str, fallback: int) -> int:
    """The config's value, else the cost model's (presets carry one), else the documented fallback."""
    if configured is not None:
        return int(configured)
    from_cost = getattr(cost, cost_attribute, None)
    return int(from_cost) if from_cost else fallback
