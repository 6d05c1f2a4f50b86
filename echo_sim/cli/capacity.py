"""`echo-sim capacity`: per policy, the highest arrival rate that meets latency targets.

    echo-sim capacity --slo ttft_p90=1s,tpot_p99=50ms [--policies ...] [--seeds 0,1,2] [--out DIR]

The search is echo_sim.capacity's (common random numbers, warm-up discarded, instability test,
bracket and bisection). Every probe is written to DIR/points/<key>.json the moment it finishes (the
sweep's point store), so an interrupted search resumes where it stopped. Outputs: capacity.csv (one
row per policy and seed: the bracket), probes.csv (every probe), capacity.png, and the printed table
with the winner as an SGLang launch line. Margins within the seed spread are ties.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from echo_sim import capacity
from echo_sim.atomic import write_text_atomic
from echo_sim.cli import recommend
from echo_sim.cli.execution import add_executor_arguments, open_executor
from echo_sim.cli.run import add_simulation_arguments, config_from_args
from echo_sim.cli.sweep import parse_list
from echo_sim.points import PointStore, canonical
from echo_sim.policies.registry import POLICY_NAMES, make_policy
from echo_sim.slo import format_slo, parse_slo

REALISABLE = "oracle"  # policies starting with this are ceilings: listed, never recommended


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--slo", required=True,
                        help="latency targets, e.g. ttft_p90=1s,tpot_p99=50ms (ttft/tpot/itl/e2e at p50/p90/p99; s or ms)")
    parser.add_argument("--policies", default=",".join(POLICY_NAMES), help="comma-separated policy specs (default: all)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; several give the seed spread")
    parser.add_argument("--warmup", type=float, default=capacity.DEFAULT_WARMUP,
                        help=f"share of requests (by arrival) discarded as warm-up (default {capacity.DEFAULT_WARMUP})")
    parser.add_argument("--tolerance", type=float, default=capacity.DEFAULT_TOLERANCE,
                        help=f"stop when failing/passing - 1 <= this (default {capacity.DEFAULT_TOLERANCE})")
    parser.add_argument("--start", type=float, default=capacity.DEFAULT_START,
                        help=f"first rate probed, req/s; with --arrival replay a time-scale factor (default {capacity.DEFAULT_START:g})")
    parser.add_argument("--out", default="capacity-out", help="output folder (default: capacity-out)")
    parser.add_argument("--no-plots", action="store_true", help="skip capacity.png")
    add_executor_arguments(parser)
    add_simulation_arguments(parser, sweep=True)


def base_config(args: argparse.Namespace):
    config = config_from_args(args)
    if config.arrival not in ("auto", "poisson", "replay"):
        raise ValueError(f"--arrival {config.arrival}: capacity needs open-loop arrivals (poisson or replay)")
    return replace(config, arrival="replay" if config.arrival == "replay" else "poisson", rate=1.0)


def stored_evaluate(store: PointStore, executor, bar: tqdm):
    """Probes -> records: stored ones reused, the rest computed by `executor` and stored on arrival."""
    def evaluate(probes: list[capacity.Probe]) -> list[dict]:
        done = {p.key: r for p in probes if (r := store.load(p.key, asdict(p.config))) is not None}
        todo = [p for p in probes if p.key not in done]
        bar.total = (bar.total or 0) + len(probes)
        bar.update(len(done))
        for probe, record in executor.map_unordered(capacity.measure, todo):
            store.write(probe.key, record)
            done[probe.key] = json.loads(canonical(record))
            bar.update()
        return [done[p.key] for p in probes]
    return evaluate


def run(args: argparse.Namespace) -> int:
    targets = parse_slo(args.slo)
    policies = parse_list(args.policies, str, "policies")
    for spec in policies:
        make_policy(spec)
    seeds = parse_list(args.seeds, int, "seeds")
    base = base_config(args)
    capacity.check_settings(base, args.warmup, args.tolerance, args.start)
    out = Path(args.out)
    with open_executor(args, base) as executor, PointStore.open(out) as store, \
            tqdm(desc="capacity", unit="probe", file=sys.stderr) as bar:
        searches, native_rate = capacity.search_capacity(
            base, policies, seeds, targets, stored_evaluate(store, executor, bar),
            warmup=args.warmup, tolerance=args.tolerance, start=args.start)
    seeds_table = capacity.capacity_table(searches, native_rate)
    summary = capacity.per_policy(seeds_table)
    probes = pd.DataFrame([record for s in searches for record in s.probes])
    write_text_atomic(out / "capacity.csv", seeds_table.to_csv(index=False))
    write_text_atomic(out / "probes.csv", probes.drop(columns=["config"], errors="ignore").to_csv(index=False))
    heading = describe(base, targets, seeds, args, native_rate, probes)
    if not args.no_plots:
        from echo_sim.report import plots as plotting

        plotting.save_capacity_plot(seeds_table, summary, heading, out / "capacity.png")
    print(heading)
    print(format_table(summary, seeds_table, native_rate))
    print()
    print(format_winner(summary, probes["model"].iloc[0], args.tolerance, seeds_table))
    print(f"\nwrote {out}/capacity.csv, probes.csv" + ("" if args.no_plots else ", capacity.png"), file=sys.stderr)
    return 0


def describe(base, targets, seeds, args, native_rate, probes: pd.DataFrame) -> str:
    first = probes.iloc[0]
    arrivals = (f"replayed {base.workload} arrivals (time-scaled; recorded mean rate {native_rate:.2f} req/s)"
                if native_rate else "Poisson arrivals (common random numbers per seed)")
    return (f"capacity under {format_slo(targets)}: workload {base.workload}, {first['hardware']} / {first['model']}, "
            f"{arrivals}, {base.requests} requests per probe, warm-up {args.warmup:.0%} and drain "
            f"{capacity.OPEN_LOOP_TRIM:.0%} discarded, queue growth <= {capacity.UNSTABLE_GROWTH:.0%}, "
            f"seeds {','.join(map(str, seeds))}, tolerance {args.tolerance:.0%}\n"
            f"acceptance: {first['acceptance_source']}; cost: {first['cost_source']}; serving: max_batch "
            f"{first['max_batch']}, KV cache {first['kv_capacity_tokens']} tokens, prefill chunk {first['prefill_chunk']} tokens")


def format_table(summary: pd.DataFrame, seeds_table: pd.DataFrame, native_rate: float | None) -> str:
    rows = []
    for _, row in summary.iterrows():
        per_seed = seeds_table[seeds_table["policy"] == row["policy"]]
        brackets = " ".join(f"[{_num(p)}, {_num(f)}]" for p, f in zip(per_seed["passing"], per_seed["failing"]))
        entry = {"policy": row["policy"], "capacity req/s": f"{row['capacity']:.1f}",
                 "seed spread": f"{row['spread']:.1f}", "per-seed bracket [pass, fail]": brackets,
                 "fails on": row["failing_on"] or "-"}
        if native_rate:
            entry["time scale"] = f"{row['time_scale']:.2f}x"
        rows.append(entry)
    return pd.DataFrame(rows).to_string(index=False)


def paired_note(seeds_table: pd.DataFrame, first: str, second: str) -> str:
    """Seed by seed (every policy of a seed sees the same requests and arrivals): who is ahead."""
    pivot = seeds_table.pivot(index="seed", columns="policy", values="capacity")
    ahead = int((pivot[first] > pivot[second]).sum())
    difference = pivot[first] - pivot[second]
    return (f"per seed, {first} - {second} = {', '.join(f'{d:+.1f}' for d in difference)} req/s "
            f"({first} ahead in {ahead} of {len(pivot)} seeds; informative only: the tie rule uses the seed spread)")


def _num(value: float) -> str:
    return "none" if value != value else f"{value:.1f}"


def format_winner(summary: pd.DataFrame, target: str, tolerance: float, seeds_table: pd.DataFrame) -> str:
    """The realisable policy with the highest mean capacity, as an SGLang launch line. Every policy
    whose margin to it is within the seed spread of either side, or within the search tolerance,
    ties with it (and is listed too)."""
    ranked = summary[~summary["policy"].str.startswith(REALISABLE)].reset_index(drop=True)
    if ranked.empty or ranked["capacity"].iloc[0] <= 0:
        return "no realisable policy meets the SLOs at any probed rate"
    best = ranked.iloc[0]
    resolution = tolerance * best["capacity"]
    tied = ranked[[recommend.is_tie(best["capacity"] - c, best["spread"], s, resolution)
                   for c, s in zip(ranked["capacity"], ranked["spread"])]]
    if len(tied) > 1:
        head = (f"tie: {', '.join(tied['policy'])} (best {best['capacity']:.1f} req/s; every margin <= the "
                f"seed spread of either side or the {tolerance:.0%} tolerance)")
    elif len(ranked) > 1:
        runner = ranked.iloc[1]
        margin = best["capacity"] - runner["capacity"]
        head = (f"winner: {best['policy']} ({best['capacity']:.1f} req/s, +{margin:.1f} req/s "
                f"(+{margin / runner['capacity']:.1%}) over {runner['policy']}; margin > seed spread "
                f"{max(best['spread'], runner['spread']):.1f} and tolerance {resolution:.1f})")
    else:
        head = f"winner: {best['policy']} ({best['capacity']:.1f} req/s; the only policy)"
    lines = [head]
    if len(ranked) > 1 and seeds_table["seed"].nunique() > 1:
        lines.append("  " + paired_note(seeds_table, best["policy"], ranked.iloc[1]["policy"]))
    lines += [f"  {row['policy']}: {recommend.launch_line(row['spec'], target)}" for _, row in tied.iterrows()]
    return "\n".join(lines)
