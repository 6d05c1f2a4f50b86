"""`echo-sim sweep`: the grid policies × load (× workloads × seeds), resumable and parallel.

Every grid point is one `simulate()` call (`compute_point`), run by an executor (echo_sim.executor)
and written by this driver to DIR/points/<key>.json (echo_sim.points) the moment it finishes, so an
interrupted sweep keeps its finished points and a re-run only computes the rest.
The tables (results.parquet, summary.csv) and the plots are rebuilt from the point files at the end.
Inputs are validated before DIR is touched: bad input writes nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from echo_sim.cli import recommend
from echo_sim.atomic import write_bytes_atomic, write_text_atomic
from echo_sim.executor import Executor, LocalExecutor
from echo_sim.points import PointStore, canonical
from echo_sim.preflight import check_point
from echo_sim.traces.format import read_trace
from echo_sim.config import SimConfig
from echo_sim.engine import simulate
from echo_sim.policies.registry import POLICY_NAMES, make_policy
from echo_sim.cli.execution import add_executor_arguments, open_executor
from echo_sim.cli.run import add_simulation_arguments, config_from_args
from echo_sim.slo import LATENCY_FIELDS, attainment, format_slo, headroom, meets, parse_slo

DEFAULT_CONCURRENCY = (1, 2, 4, 8, 16, 32, 64, 128, 256)
SUMMARY_FIELDS = (
    "policy", "concurrency", "rate", "workload", "hardware", "model", "seed", "requests",
    "output_tokens_per_s", "speedup_vs_ar", "mean_accepted_tokens", "verified_tokens_per_step", "waste",
    *LATENCY_FIELDS, "requests_per_s", "slo", "slo_attainment", "slo_goodput", "slo_headroom", "meets_slo",
    "sim_cpu_seconds", "acceptance_source", "cost_source",
    # the serving-engine knobs that move rankings (docs/COST_MODEL.md): recorded beside the cost source
    "cost_model", "prefill_mode", "verify_graphs", "moe_routing", "draft_extend",
)
# Open-loop sweeps rank policies by SLO attainment; these targets unless --slo says otherwise.
DEFAULT_OPEN_LOOP_SLO = "ttft_p90=1s,tpot_p99=50ms"


def parse_list(text: str, kind, name: str) -> list:
    """Comma-separated values, duplicates dropped (first occurrence kept: one row per point)."""
    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ValueError(f"--{name}: cannot parse {text!r} as a comma-separated list of {kind.__name__}")
    if not values:
        raise ValueError(f"--{name}: empty list")
    return list(dict.fromkeys(values))


def parse_policies(text: str) -> list[str]:
    """Policy specs from one comma-separated list: 'ar,static:S=5,k=4,N=16' is two specs, since a
    comma followed by `knob=value` (no ':') continues the previous spec's knobs."""
    specs: list[str] = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        if specs and "=" in item and ":" not in item and ":" in specs[-1]:
            specs[-1] += "," + item
        else:
            specs.append(item)
    if not specs:
        raise ValueError("--policies: empty list")
    return list(dict.fromkeys(specs))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policies", default=",".join(POLICY_NAMES),
                        help="comma-separated policy specs; knobs follow their policy, e.g. "
                             "'ar,static:S=5,k=4,N=16,echo:budget=fixed' (default: all)")
    load = parser.add_mutually_exclusive_group()
    load.add_argument("--concurrency", default=",".join(map(str, DEFAULT_CONCURRENCY)),
                      help="closed-loop client counts (default 1..256, powers of two)")
    load.add_argument("--rates", default=None, help="open-loop Poisson arrival rates in requests/s, instead of --concurrency (default: none)")
    parser.add_argument("--workloads", default=None, help="comma-separated workloads (default: the one --workload names)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; several give error bars (default: 0)")
    parser.add_argument("--out", default="sweep-out", help="output folder (default: sweep-out)")
    parser.add_argument("--step-log", action="store_true", help="write per-step records to DIR/steps/ (default: off)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots (default: plots are drawn)")
    parser.add_argument("--slo", default=None,
                        help="latency targets for SLO attainment, e.g. ttft_p90=1s,tpot_p99=50ms (default with "
                             f"--rates: {DEFAULT_OPEN_LOOP_SLO}; open-loop sweeps recommend by attainment)")
    add_executor_arguments(parser)
    add_simulation_arguments(parser, sweep=True)


@dataclass(frozen=True)
class GridPoint:
    config: SimConfig
    slo: str | None = None  # canonical targets (slo.format_slo); attainment is computed with them

    @property
    def key(self) -> str:
        identity = asdict(self.config) if self.slo is None else {**asdict(self.config), "slo": self.slo}
        text = json.dumps(identity, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def build_grid(args: argparse.Namespace) -> list[GridPoint]:
    """Validate every input, then list the points (ar is always included: speedups need it)."""
    policies = parse_policies(args.policies)
    for spec in policies:
        make_policy(spec)  # raises PolicyError listing the known names
    if "ar" not in policies:
        policies = ["ar", *policies]
    seeds = parse_list(args.seeds, int, "seeds")
    base = config_from_args(args)  # validates trace, workload, hardware, model, calibration
    workloads = parse_list(args.workloads, str, "workloads") if args.workloads else [base.workload]
    if args.rates:
        loads = [("rate", rate) for rate in parse_list(args.rates, float, "rates")]
    else:
        loads = [("concurrency", c) for c in parse_list(args.concurrency, int, "concurrency")]
    trace = read_trace(base.trace_path())  # once: every point replays the same trace
    slo_text = args.slo or (DEFAULT_OPEN_LOOP_SLO if args.rates else None)
    slo = format_slo(parse_slo(slo_text)) if slo_text else None
    points = []
    for workload in workloads:
        for seed in seeds:
            for field, value in loads:
                for spec in policies:
                    config = replace(base, policy=spec, workload=workload, seed=seed,
                                     step_log=args.step_log, **{field: value})
                    check_point(config, trace)  # everything a worker could fail on, before any write
                    points.append(GridPoint(config, slo))
    return points


def compute_point(point: GridPoint) -> tuple[dict, bytes | None]:
    """Worker side (pure): the point's metrics record and, with --step-log, its steps as parquet."""
    result = simulate(point.config)
    record = dict(result.metrics, key=point.key, config=asdict(point.config))
    if point.slo is not None:
        targets = parse_slo(point.slo)
        share = attainment(result.requests, targets)
        record.update(slo=point.slo, slo_attainment=share, slo_goodput=record["requests_per_s"] * share,
                      slo_headroom=headroom(record, targets), meets_slo=meets(record, targets))
    steps = None
    if point.config.step_log and result.steps is not None:
        steps = result.steps.to_parquet(index=False)
    return record, steps


def run_grid(points: list[GridPoint], out: Path, jobs: int = 1, executor: Executor | None = None) -> list[dict]:
    """Every point's record: stored ones reused, the rest computed by `executor` (a LocalExecutor of
    `jobs` by default) and written by this process the moment each one finishes."""
    executor = executor or LocalExecutor(jobs)
    with PointStore.open(out) as store:
        done = {p.key: r for p in points if (r := store.load(p.key, asdict(p.config))) is not None}
        todo = [p for p in points if p.key not in done]
        if done:
            print(f"resuming: {len(done)} of {len(points)} points already done in {out}", file=sys.stderr)
        with tqdm(total=len(points), initial=len(done), desc="sweep", unit="point", file=sys.stderr) as bar:
            for point, (record, steps) in executor.map_unordered(compute_point, todo):
                store.write(point.key, record, steps)
                done[point.key] = json.loads(canonical(record))
                bar.update()
    return [done[p.key] for p in points]


def tidy(records: list[dict]) -> pd.DataFrame:
    """One row per point; speedup_vs_ar from the ar point with the same load, workload and seed."""
    table = pd.DataFrame([{k: v for k, v in r.items() if k != "config"} for r in records])
    for column in ("concurrency", "rate"):
        if column not in table:
            table[column] = None
    match = ["workload", "seed", "concurrency", "rate"]
    ar = table[table["policy"] == "ar"][match + ["output_tokens_per_s"]]
    ar = ar.rename(columns={"output_tokens_per_s": "ar_tokens_per_s"})
    table = table.drop(columns=["speedup_vs_ar"], errors="ignore").merge(ar, on=match, how="left")
    table["speedup_vs_ar"] = table["output_tokens_per_s"] / table["ar_tokens_per_s"]
    return table.drop(columns=["ar_tokens_per_s"])


def write_outputs(table: pd.DataFrame, out: Path, plots: bool) -> None:
    write_bytes_atomic(out / "results.parquet", table.to_parquet(index=False))
    fields = [f for f in SUMMARY_FIELDS if f in table.columns]
    write_text_atomic(out / "summary.csv", table[fields].to_csv(index=False))
    if plots:
        from echo_sim.report import plots as plotting

        plotting.save_sweep_plots(table, out)


def run(args: argparse.Namespace) -> int:
    points = build_grid(args)  # all validation happens before anything is written
    out = Path(args.out)
    with open_executor(args, points[0].config) as executor:
        table = tidy(run_grid(points, out, executor=executor))
    write_outputs(table, out, plots=not args.no_plots)
    print(recommend.format_table(table))
    print()
    print(recommend.format_latency_table(table))
    print()
    print(recommend.format_recommendations(table))
    print(f"\nwrote {out}/results.parquet, summary.csv" + ("" if args.no_plots else ", plots"), file=sys.stderr)
    return 0
