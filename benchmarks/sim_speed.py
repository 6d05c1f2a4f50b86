"""Simulator speed: simulated requests per CPU-second and peak memory, `echo` and `ar`.

    python benchmarks/sim_speed.py                       # 1k, 10k, 100k requests; echo and ar
    python benchmarks/sim_speed.py --requests 10000 --policies echo --no-write
    git archive 2f48db3 | tar -x -C /tmp/before          # the code before a speed change ...
    python benchmarks/sim_speed.py --baseline /tmp/before   # ... run beside this one, point by point

Workload: ShareGPT prompt/output lengths (traces/workloads), closed loop at concurrency 256,
h200 / llama-3.1-8b with the default cost model (fitted). Acceptance: the shipped MT-Bench trace (traces/mt_bench*.trace.npz)
when present, else a synthetic trace built here with the real lattice layout (k + (S-1)k² = 84
nodes per position for k=4, S=6, the frontier rule of TRACES.md, a calibrated random draft); the
result records which. Every (policy, requests) point runs in a fresh process, so its peak memory
(ru_maxrss) is its own. CPU time is that of the simulation (engine + metrics: `sim_cpu_seconds`),
without building or loading the trace; the setup time is reported beside it.
With --baseline DIR (a tree of the code before a change, with its own benchmarks/sim_speed.py),
every point and profile runs there and here alternately, each in a fresh process, so a shared
machine's load hits both alike: the report gives both rates, their ratio, and whether the two
simulations agree (steps, mean batch, MAT, throughput: a speed change must not move them).
Results: benchmarks/results/sim_speed.json and .md (machine, command, date), written atomically.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from echo_sim.atomic import write_text_atomic  # noqa: E402
from echo_sim.config import SimConfig  # noqa: E402
from echo_sim.paths import DEFAULT_TRACE_GLOB, TRACES_DIR  # noqa: E402
from echo_sim.testing import full_trace  # noqa: E402
from echo_sim.traces.format import TraceSet  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
CONCURRENCY = 256
TARGET_REQUESTS_PER_CPU_S = 1600
TARGET_PEAK_BYTES = 2 * 1024**3


def acceptance_trace() -> tuple[TraceSet, str]:
    shipped = sorted(TRACES_DIR.glob(DEFAULT_TRACE_GLOB))
    if shipped:
        from echo_sim.traces.format import read_trace

        return read_trace(shipped[0]), str(shipped[0].relative_to(REPO))
    return full_trace(), "synthetic (echo_sim.testing.full_trace, k=4, S=6, 32x1024 positions)"


def measure(policy: str, requests: int) -> dict:
    """One point, in this process: setup, then the simulation under CPU time."""
    from echo_sim.engine import simulate

    setup = time.process_time()
    trace, label = acceptance_trace()
    setup = time.process_time() - setup
    config = SimConfig(policy=policy, concurrency=CONCURRENCY, requests=requests, workload="sharegpt")
    metrics = simulate(config, trace).metrics
    cpu = metrics["sim_cpu_seconds"]
    return {
        "policy": policy, "requests": requests, "concurrency": CONCURRENCY, "trace": label,
        "sim_cpu_seconds": cpu, "requests_per_cpu_second": requests / cpu,
        "steps": metrics["steps"], "ms_per_step": 1000 * cpu / metrics["steps"],
        "mean_batch_size": metrics["mean_batch_size"], "mean_accepted_tokens": metrics["mean_accepted_tokens"],
        "output_tokens_per_s": metrics["output_tokens_per_s"], "setup_cpu_seconds": setup,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


class Timed:
    """Wraps an object; the CPU seconds spent in its `methods` accumulate into `spent`."""

    def __init__(self, inner, methods: tuple[str, ...], spent: dict):
        self._inner = inner
        for name in methods:
            setattr(self, name, self._timed(name, getattr(inner, name), spent))

    @staticmethod
    def _timed(name, method, spent):
        def call(*args, **kwargs):
            start = time.process_time()
            try:
                return method(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.process_time() - start
        return call

    def __getattr__(self, name):
        return getattr(self._inner, name)


def breakdown(policy: str, requests: int, concurrency: int = CONCURRENCY) -> dict:
    """Where a step's CPU time goes: the policy (select, observe), the cost model (components),
    the engine (everything else). A separate run: the wrappers add a little time of their own."""
    from echo_sim.engine import build_simulation

    trace, _ = acceptance_trace()
    config = SimConfig(policy=policy, concurrency=concurrency, requests=requests, workload="sharegpt")
    spent: dict = {}
    simulation = build_simulation(config, trace)
    simulation.policy = Timed(simulation.policy, ("select", "observe"), spent)
    simulation.cost = Timed(simulation.cost, ("components",), spent)
    start = time.process_time()
    simulation.run()
    total = time.process_time() - start
    steps = len(simulation.steps.records)
    parts = {f"policy.{k}" if k != "components" else "cost.components": v for k, v in spent.items()}
    parts["engine (rest)"] = total - sum(spent.values())
    return {"policy": policy, "requests": requests, "concurrency": concurrency, "steps": steps,
            "mean_batch_size": float(np.mean([r.batch_size for r in simulation.steps.records])),
            "us_per_step": {k: 1e6 * v / steps for k, v in parts.items()}}


def run_point(policy: str, requests: int, mode: str = "--one", concurrency: int = CONCURRENCY,
              tree: Path = REPO) -> dict:
    """measure() (or breakdown()) in a fresh interpreter, so peak memory is the point's own; `tree`:
    the code to measure (this one, or a --baseline tree with its own copy of this script)."""
    extra = [] if mode == "--one" else [str(concurrency)]
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, str(tree / "benchmarks" / "sim_speed.py"), mode, policy, str(requests),
                          *extra], check=True, capture_output=True, text=True, cwd=tree, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


SAME_FIELDS = ("steps", "mean_batch_size", "mean_accepted_tokens", "output_tokens_per_s")


def baseline_report(points: list[dict], before: list[dict], breakdowns: list[dict], before_parts: list[dict],
                    baseline: str) -> str:
    """The before/after tables of a --baseline run."""
    lines = ["", f"Before/after: the same points run with the code in {baseline} (before) and this tree (after), "
             "alternately, each in a fresh process.", "",
             "| policy | requests | before req / CPU-s | after req / CPU-s | speedup | before ms / step | "
             "after ms / step | peak RSS MB after | same steps, batch, MAT, tok/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for after, old in zip(points, before):
        same = all(after[k] == old[k] for k in SAME_FIELDS)
        lines.append(f"| {after['policy']} | {after['requests']:,} | {old['requests_per_cpu_second']:,.0f} | "
                     f"{after['requests_per_cpu_second']:,.0f} | "
                     f"{after['requests_per_cpu_second'] / old['requests_per_cpu_second']:.2f}x | "
                     f"{old['ms_per_step']:.3f} | {after['ms_per_step']:.3f} | {after['peak_rss_bytes'] / 2**20:,.0f} | "
                     f"{'yes' if same else 'NO'} |")
    for after, old in zip(breakdowns, before_parts):
        lines += ["", f"Per part, µs per step ({after['policy']}, {after['requests']:,} requests, concurrency "
                  f"{after['concurrency']}, mean batch {after['mean_batch_size']:.0f}; instrumented runs):", "",
                  "| part | before | after | speedup |", "|---|---:|---:|---:|"]
        for name in old["us_per_step"]:
            b, a = old["us_per_step"][name], after["us_per_step"].get(name, float("nan"))
            lines.append(f"| {name} | {b:.0f} | {a:.0f} | {b / a:.1f}x |")
        b, a = sum(old["us_per_step"].values()), sum(after["us_per_step"].values())
        lines.append(f"| step (all parts) | {b:.0f} | {a:.0f} | {b / a:.1f}x |")
    return "\n".join(lines) + "\n"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} logical CPUs (shared; load average {load} at the end), "
            f"Python {platform.python_version()}, numpy {np.__version__}")


def report(points: list[dict], command: str, breakdowns: list[dict]) -> str:
    lines = [f"# Simulator speed ({datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')})", "",
             f"Command: `{command}`  ", f"Machine: {machine()}  ",
             f"Acceptance trace: {points[0]['trace']}  ",
             f"Workload: ShareGPT lengths, closed loop, concurrency {CONCURRENCY}, h200 / llama-3.1-8b, default (fitted) cost model", "",
             "| policy | requests | sim CPU s | requests / CPU-s | steps | ms / step | mean batch | MAT | peak RSS MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        lines.append(f"| {p['policy']} | {p['requests']:,} | {p['sim_cpu_seconds']:.2f} | "
                     f"{p['requests_per_cpu_second']:,.0f} | {p['steps']:,} | {p['ms_per_step']:.3f} | "
                     f"{p['mean_batch_size']:.1f} | {p['mean_accepted_tokens']:.2f} | {p['peak_rss_bytes'] / 2**20:,.0f} |")
    lines += ["", f"Targets: >= {TARGET_REQUESTS_PER_CPU_S} requests per CPU-second for echo; peak memory < 2 GB; "
              "time linear in requests (compare requests / CPU-s across sizes)."]
    for parts in breakdowns:
        total = sum(parts["us_per_step"].values())
        lines += ["", f"Where a step's CPU time goes ({parts['policy']}, {parts['requests']:,} requests, concurrency "
                  f"{parts['concurrency']}, mean batch {parts['mean_batch_size']:.0f}, separate instrumented run):", "",
                  "| part | µs / step | share |", "|---|---:|---:|"]
        lines += [f"| {name} | {us:.0f} | {us / total:.0%} |" for name, us in parts["us_per_step"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", default="1000,10000,100000")
    parser.add_argument("--policies", default="echo,ar")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    parser.add_argument("--breakdown", default="echo:10000:64,echo:10000:256",
                        help="POLICY:REQUESTS[:CONCURRENCY],... to profile by part ('' = none)")
    parser.add_argument("--baseline", help="a tree of the code before a change: run every point there too")
    parser.add_argument("--one", nargs=2, metavar=("POLICY", "REQUESTS"), help=argparse.SUPPRESS)
    parser.add_argument("--parts", nargs=3, metavar=("POLICY", "REQUESTS", "CONCURRENCY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one[0], int(args.one[1]))))
        return 0
    if args.parts:
        print(json.dumps(breakdown(args.parts[0], int(args.parts[1]), int(args.parts[2]))))
        return 0
    baseline = Path(args.baseline).resolve() if args.baseline else None
    if baseline is not None and not (baseline / "benchmarks" / "sim_speed.py").is_file():
        parser.error(f"--baseline: {args.baseline!r} has no benchmarks/sim_speed.py")
    points, before = [], []
    for requests in [int(n) for n in args.requests.split(",")]:
        for policy in args.policies.split(","):
            if baseline is not None:
                before.append(run_point(policy, requests, tree=baseline))
            points.append(run_point(policy, requests))
            p = points[-1]
            print(f"{policy:>6} {requests:>7,} requests: {p['requests_per_cpu_second']:8,.0f} req/CPU-s, "
                  f"{p['ms_per_step']:.3f} ms/step, peak {p['peak_rss_bytes'] / 2**20:,.0f} MB"
                  + (f" (before: {before[-1]['requests_per_cpu_second']:,.0f} req/CPU-s)" if before else ""), flush=True)
    breakdowns, before_parts = [], []
    for spec in filter(None, args.breakdown.split(",")):
        name, count, *concurrency = spec.split(":")
        level = int(concurrency[0]) if concurrency else CONCURRENCY
        if baseline is not None:
            before_parts.append(run_point(name, int(count), "--parts", level, tree=baseline))
        breakdowns.append(run_point(name, int(count), "--parts", level))
    command = "python benchmarks/sim_speed.py " + " ".join(argv if argv is not None else sys.argv[1:])
    text = report(points, command.strip(), breakdowns)
    if baseline is not None:
        text += baseline_report(points, before, breakdowns, before_parts, args.baseline)
    print(text)
    if not args.no_write:
        record = {"machine": machine(), "command": command.strip(), "points": points, "breakdown": breakdowns,
                  **({"baseline": args.baseline, "before": before, "before_breakdown": before_parts} if baseline else {})}
        write_text_atomic(RESULTS / "sim_speed.json", json.dumps(record, indent=1))
        write_text_atomic(RESULTS / "sim_speed.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
