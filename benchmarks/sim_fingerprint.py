"""Fingerprints of simulations, to show that a speed change leaves every result bit-identical.

    python benchmarks/sim_fingerprint.py --out /tmp/before.json            # record
    python benchmarks/sim_fingerprint.py --out /tmp/after.json --compare /tmp/before.json

Each case runs one simulation with the per-step log on and records its metrics (the fields timing
the run itself aside) and a SHA-256 of the per-request table and of the per-step table (every step
record, its cost components and the per-request selected depth / width / accepted / oracle lists).
The cases cover the elastic `echo` at 1, 16 and 256 clients on the trace and ShareGPT workloads,
its ablation switches, every other policy, and the cost-model knobs the hot paths branch on
(roofline, per-batch-size graphs, mixed prefill, a MoE preset). `--compare` prints every case whose
fingerprint differs and exits non-zero if any does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from echo_sim.config import SimConfig  # noqa: E402
from echo_sim.engine import simulate  # noqa: E402

TIMING_FIELDS = ("sim_cpu_seconds",)

# (policy, concurrency, requests, workload, extra SimConfig fields)
CASES = [
    *[("echo", c, n, w, {}) for w in ("trace", "sharegpt") for c, n in ((1, 20), (16, 200), (256, 1000))],
    *[(f"echo:{knobs}", 64, 300, "trace", {}) for knobs in
      ("gate=select", "gate=off", "budget=fixed", "shape=off", "calibration=off", "bucketing=off",
       "prefill_term=off", "probe=0", "S_max=3")],
    *[(policy, 16, 200, "trace", {}) for policy in
      ("ar", "static", "static-chain", "static-adaptive", "static-adaptive:k=1", "dynamic", "goodput",
       "oracle", "oracle:shape=full", "static:S=5,k=2,N=8")],
    ("echo", 64, 300, "sharegpt", {"cost": "roofline"}),
    ("echo", 64, 300, "sharegpt", {"verify_graphs": "per-batch-size"}),
    ("echo", 64, 300, "sharegpt", {"prefill_mode": "mixed"}),
    ("echo", 32, 200, "trace", {"model": "qwen3-235b-a22b"}),
    ("goodput", 64, 300, "arxiv", {}),
    ("echo", 256, 600, "arxiv", {}),
]


def digest(frame) -> str:
    return hashlib.sha256(frame.to_csv(index=False).encode()).hexdigest()[:16]


def fingerprint(policy: str, concurrency: int, requests: int, workload: str, extra: dict) -> dict:
    config = SimConfig(policy=policy, concurrency=concurrency, requests=requests, workload=workload,
                       step_log=True, **extra)
    result = simulate(config)
    metrics = {k: v for k, v in result.metrics.items() if k not in TIMING_FIELDS}
    return {"metrics": json.loads(json.dumps(metrics, default=str)), "requests": digest(result.requests),
            "steps": digest(result.steps), "cpu_seconds": result.metrics["sim_cpu_seconds"]}


def case_name(case) -> str:
    policy, concurrency, requests, workload, extra = case
    knobs = ",".join(f"{k}={v}" for k, v in extra.items())
    return f"{policy} C={concurrency} n={requests} {workload}" + (f" [{knobs}]" if knobs else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--compare", help="a previous --out to compare with")
    parser.add_argument("--only", default="", help="run only cases whose name contains this")
    args = parser.parse_args(argv)
    record = {}
    for case in CASES:
        name = case_name(case)
        if args.only and args.only not in name:
            continue
        record[name] = fingerprint(*case)
        print(f"{name}: {record[name]['cpu_seconds']:.2f} CPU-s", flush=True)
    Path(args.out).write_text(json.dumps(record, indent=1))
    if not args.compare:
        return 0
    before = json.loads(Path(args.compare).read_text())
    differ = []
    for name, now in record.items():
        old = before.get(name)
        if old is None:
            print(f"not in {args.compare}: {name}")
            continue
        same = all(now[key] == old[key] for key in ("metrics", "requests", "steps"))
        if not same:
            differ.append(name)
            fields = [k for k in now["metrics"] if now["metrics"][k] != old["metrics"].get(k)]
            print(f"DIFFERS: {name} (requests {now['requests'] == old['requests']}, steps "
                  f"{now['steps'] == old['steps']}, metrics {fields})")
    ratio = sum(before[n]["cpu_seconds"] for n in record if n in before) / sum(r["cpu_seconds"] for r in record.values())
    print(f"{len(record) - len(differ)} of {len(record)} cases identical; CPU before / now = {ratio:.2f}x")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
