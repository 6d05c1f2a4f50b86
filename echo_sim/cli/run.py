"""`echo-sim run`: simulate one policy at one load, and `ar` on the identical workload for the speedup.

    echo-sim run --policy echo --concurrency 64 [--requests N] [--workload sharegpt] [--json]

Defaults are SimConfig's (echo_sim.config), never restated here: an option left out is not passed.
The knobs shared with `echo-sim sweep` are registered by `add_simulation_arguments(parser, sweep=True)`.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace

import numpy as np

from echo_sim.config import ARRIVAL_MODES, SimConfig, config_defaults
from echo_sim.workload import WORKLOAD_NAMES

# (option, SimConfig field, type, metavar, help) shared by run and sweep; a help text for a field
# whose default is None says what None means.
SHARED_OPTIONS = (
    ("--requests", "requests", int, "N", "simulated requests"),
    ("--trace", "trace", str, "PATH", "acceptance trace file (default: the shipped MT-Bench trace)"),
    ("--workload", "workload", str, "NAME", f"prompt/output lengths: {', '.join(WORKLOAD_NAMES)}"),
    ("--arrival", "arrival", str, "MODE", f"load model: {', '.join(ARRIVAL_MODES)}"),
    ("--hardware", "hardware", str, "NAME", "hardware preset: h200, h100, a100 (default: h200, or the calibration file's)"),
    ("--model", "model", str, "NAME",
     "target model preset: llama-3.1-8b, qwen3-8b, qwen3-235b-a22b, qwen2.5-coder-1.5b "
     "(default: llama-3.1-8b, or the calibration file's)"),
    ("--calibration", "calibration", str, "FILE", "calibration file; supersedes the presets and --cost (default: none)"),
    ("--cost", "cost", str, "MODE", "preset step-time model: fitted, roofline (default: fitted where the hardware "
     "has a fitted profile: a100, h100, h200)"),
    ("--prefill-mode", "prefill_mode", str, "MODE", "serving knob: separate (prefill chunk as its own forward, "
     "SGLang's EAGLE path) or mixed (chunked prefill in the verify forward)"),
    ("--verify-graphs", "verify_graphs", str, "MODE", "serving knob: token-buckets or per-batch-size "
     "(SGLang's EAGLE verify graphs, --graph-tokens per request)"),
    ("--graph-tokens", "graph_tokens", int, "N", "tokens per request of per-batch-size verify graphs"),
    ("--moe-routing", "moe_routing", str, "MODE", "serving knob: uniform or gini:G (expert load concentration)"),
    ("--max-batch", "max_batch", int, "N", "running requests at most"),
    ("--kv-capacity", "kv_capacity_tokens", int, "TOKENS", "KV-cache tokens (default: the cost preset's)"),
    ("--prefill-chunk", "prefill_chunk", int, "TOKENS",
     "prompt tokens prefilled per step (default: the hardware preset's, 8192 on h200)"),
)
# Options only `run` has (the sweep takes lists of these).
RUN_OPTIONS = (
    ("--policy", "policy", str, "SPEC", "policy spec, e.g. echo, static:S=5,k=4,N=16"),
    ("--concurrency", "concurrency", int, "C", "closed-loop clients (give this or --rate)"),
    ("--rate", "rate", float, "R", "open-loop Poisson arrivals per second (give this or --concurrency)"),
    ("--seed", "seed", int, "S", "seed of workload sampling, trace mapping and arrivals"),
)
SUMMARY = (
    ("output tokens/s", "output_tokens_per_s", "{:.1f}"), ("speedup vs ar", "speedup_vs_ar", "{:.3f}x"),
    ("mean accepted tokens", "mean_accepted_tokens", "{:.3f}"),
    ("verified tokens/step", "verified_tokens_per_step", "{:.1f}"), ("waste", "waste", "{:.1%}"),
    ("gap to oracle/step", "oracle_gap_per_step", "{:.3f}"), ("draft time share", "draft_time_share", "{:.1%}"),
    ("TTFT p50", "ttft_p50", "{:.4f} s"), ("TPOT p50", "tpot_p50", "{:.5f} s"), ("TPOT p99", "tpot_p99", "{:.5f} s"),
    ("steps", "steps", "{}"), ("simulated", "simulated_seconds", "{:.2f} s"),
    ("acceptance source", "acceptance_source", "{}"), ("cost source", "cost_source", "{}"),
    ("prefill mode", "prefill_mode", "{}"), ("verify graphs", "verify_graphs", "{}"), ("MoE routing", "moe_routing", "{}"),
    ("sim CPU", "sim_cpu_seconds", "{:.2f} s"), ("ar baseline sim CPU", "baseline_sim_cpu_seconds", "{:.2f} s"),
)


def add_simulation_arguments(parser: argparse.ArgumentParser, sweep: bool = False) -> None:
    """Register the SimConfig options (all default to SimConfig's own defaults)."""
    defaults = config_defaults()
    options = SHARED_OPTIONS if sweep else RUN_OPTIONS + SHARED_OPTIONS
    for option, field, kind, metavar, text in options:
        shown = "" if defaults[field] is None else f" (default: {defaults[field]})"
        parser.add_argument(option, dest=field, type=kind, metavar=metavar, default=argparse.SUPPRESS,
                            help=text + shown)
    parser.set_defaults(_simulation_options=tuple(field for _, field, _, _, _ in options))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_simulation_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    """A SimConfig from the options given; validated (the sweep fills in the load per point)."""
    given = {field: getattr(args, field) for field in args._simulation_options if hasattr(args, field)}
    config = SimConfig(**given)
    if "policy" in args._simulation_options:
        return config.validate()
    config.validate_inputs()
    config.load_cost()  # an unknown preset or knob fails here, before any output
    return config


def run_with_baseline(config: SimConfig) -> dict:
    """Metrics of `config` plus speedup_vs_ar (ar on the same workload, seed and load).

    sim_cpu_seconds is the policy's own simulation; baseline_sim_cpu_seconds that of the `ar` run
    (0.0 when the policy is `ar`: its own run is the baseline)."""
    from echo_sim.engine import simulate
    from echo_sim.policies.registry import make_policy
    from echo_sim.traces.format import read_trace

    from echo_sim.preflight import check_point

    policy = make_policy(config.policy)  # an unknown policy fails before any simulation
    trace = read_trace(config.trace_path())
    check_point(config, trace)
    metrics = dict(simulate(config, trace).metrics)
    if policy.name == "ar":
        baseline = {"output_tokens_per_s": metrics["output_tokens_per_s"], "sim_cpu_seconds": 0.0}
    else:
        baseline = simulate(replace(config, policy="ar", step_log=False), trace).metrics
    metrics["speedup_vs_ar"] = metrics["output_tokens_per_s"] / baseline["output_tokens_per_s"]
    metrics["baseline_sim_cpu_seconds"] = baseline["sim_cpu_seconds"]
    return metrics


def json_safe(value):
    """NaN and infinities become null (in nested dicts and lists too) and numpy scalars plain
    numbers, so the output is strict JSON."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


def format_summary(metrics: dict) -> str:
    load = (f"concurrency {metrics['concurrency']}" if metrics["arrival"] == "closed"
            else f"{metrics['arrival']} arrivals" + (f" at {metrics['rate']} req/s" if metrics["rate"] else ""))
    lines = [f"{metrics['policy']}: {metrics['requests']} requests, {load}, workload {metrics['workload']}, "
             f"{metrics['hardware']} / {metrics['model']}"]
    for label, key, pattern in SUMMARY:
        value = metrics.get(key)
        shown = "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else pattern.format(value)
        lines.append(f"  {label:<22} {shown}")
    if not metrics["steady_state"]:
        lines.append("  (too few requests for a steady-state window: throughput is over the whole run)")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    metrics = run_with_baseline(config_from_args(args))
    if args.json:
        print(json.dumps(json_safe(metrics)))
    else:
        print(format_summary(metrics))
    return 0
