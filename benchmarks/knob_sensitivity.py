"""Which policy wins at which load, across the step-time model's serving-engine knobs.

    python benchmarks/knob_sensitivity.py [--requests 1000] [--per-client 4] [--seeds 0,1]
                                          [--model llama-3.1-8b] [--policies ar,static,...]
                                          [--out benchmarks/results/knob_sensitivity.md]

Grid: policies × closed-loop concurrency {1, 16, 64, 256} × knob settings (each setting changes one
knob from the default: cost model, prefill mode, verify graphs; MoE routing for an MoE model), on
the shipped MT-Bench trace, seeds as given. The winner at a load is the policy with the highest
mean output tokens/s over seeds (oracle, the per-step ceiling, is not a candidate); a margin over
the runner-up within the seed spread (max − min over seeds of either) is a tie. Writes the table
(.md), every point (.csv) and a figure (.png): winners per load per knob setting.

Every point is appended to the .csv the moment it finishes; a re-run skips the points already there
(Ctrl-C loses nothing but the point in flight).
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

sys.path.insert(0, str(REPO / "benchmarks"))
from tables import markdown  # noqa: E402

from echo_sim.config import SimConfig  # noqa: E402
from echo_sim.cost.presets import load_model  # noqa: E402
from echo_sim.engine import simulate  # noqa: E402
from echo_sim.traces.format import read_trace  # noqa: E402

POLICIES = ("ar", "static-chain", "static", "dynamic", "goodput", "echo", "echo:gate=off")
CONCURRENCY = (1, 16, 64, 256)
SETTINGS = {  # label -> SimConfig fields changed from the defaults
    "default (fitted, separate prefill, token buckets)": {},
    "cost roofline": {"cost": "roofline"},
    "prefill mixed": {"prefill_mode": "mixed"},
    "verify graphs per-batch-size N=16": {"verify_graphs": "per-batch-size", "graph_tokens": 16},
}
MOE_SETTING = {"MoE routing gini:0.2": {"moe_routing": "gini:0.2"}}
KEYS = ["setting", "policy", "concurrency", "seed", "requests", "model"]


def grid(model: str, policies: list[str], seeds: list[int]) -> list[tuple[str, dict, str, int, int]]:
    settings = dict(SETTINGS, **(MOE_SETTING if load_model(model).target.is_moe else {}))
    return [(label, change, policy, c, seed) for label, change in settings.items()
            for c in CONCURRENCY for policy in policies for seed in seeds]


def requests_at(concurrency: int, args) -> int:
    """Requests simulated at a load: --requests, but at most --per-client per client (at least 40):
    one client needs far fewer requests than 256 for a stable mean, and costs far more steps each."""
    return min(args.requests, max(40, args.per_client * concurrency))


def run_points(points, args, csv: Path) -> pd.DataFrame:
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame(columns=KEYS)
    seen = set(map(tuple, done[KEYS].astype(str).values))
    trace = read_trace(SimConfig().trace_path())
    todo = [p for p in points
            if (p[0], p[2], str(p[3]), str(p[4]), str(requests_at(p[3], args)), args.model) not in seen]
    for i, (label, change, policy, concurrency, seed) in enumerate(todo, 1):
        config = SimConfig(policy=policy, concurrency=concurrency, requests=requests_at(concurrency, args),
                           seed=seed, model=args.model, **change)
        metrics = simulate(config, trace).metrics
        row = {"setting": label, "policy": policy, "concurrency": concurrency, "seed": seed,
               "requests": config.requests, "model": args.model,
               **{k: metrics[k] for k in ("output_tokens_per_s", "cost_source", "cost_model", "prefill_mode",
                                          "verify_graphs", "moe_routing", "acceptance_source")}}
        pd.DataFrame([row]).to_csv(csv, mode="a", header=not csv.exists(), index=False)
        print(f"[{i}/{len(todo)}] {label} | {policy} @ {concurrency} seed {seed}: "
              f"{row['output_tokens_per_s']:.0f} tok/s", file=sys.stderr)
    return pd.read_csv(csv)


def winners(points: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, concurrency): winner, runner-up, margin, seed spread, tie."""
    stats = points[points.policy != "oracle"].groupby(["setting", "concurrency", "policy"]).output_tokens_per_s
    table = pd.DataFrame({"mean": stats.mean(), "spread": stats.max() - stats.min()}).reset_index()
    rows = []
    for (setting, concurrency), part in table.groupby(["setting", "concurrency"], sort=False):
        part = part.sort_values(["mean", "policy"], ascending=[False, True])
        first, second = part.iloc[0], part.iloc[1]
        margin = first["mean"] - second["mean"]
        rows.append({"setting": setting, "concurrency": int(concurrency), "winner": first.policy,
                     "runner-up": second.policy, "margin %": 100 * margin / second["mean"],
                     "tie": bool(margin <= max(first.spread, second.spread)),
                     "winner tok/s": first["mean"]})
    return pd.DataFrame(rows)


def setting_order(table: pd.DataFrame) -> list[str]:
    return [s for s in {**SETTINGS, **MOE_SETTING} if s in set(table.setting)]


def figure(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = setting_order(table)
    policies = sorted(table.winner.unique())
    colours = {p: plt.cm.tab10(i % 10) for i, p in enumerate(policies)}
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(settings) + 1.5))
    for y, setting in enumerate(settings):
        for x, (_, row) in enumerate(table[table.setting == setting].sort_values("concurrency").iterrows()):
            ax.add_patch(plt.Rectangle((x, y), 0.95, 0.9, color=colours[row.winner], alpha=0.45 if row.tie else 0.9))
            label = row.winner + (" (tie)" if row.tie else f" +{row['margin %']:.0f}%")
            ax.text(x + 0.47, y + 0.45, label, ha="center", va="center", fontsize=7)
    ax.set_xlim(0, len(CONCURRENCY)), ax.set_ylim(0, len(settings))
    ax.set_xticks([i + 0.47 for i in range(len(CONCURRENCY))], [str(c) for c in CONCURRENCY])
    ax.set_yticks([i + 0.45 for i in range(len(settings))], settings, fontsize=8)
    ax.set_xlabel("concurrency (closed loop)")
    ax.set_title("winner per load per serving-engine knob (faded: tie within the seed spread)", fontsize=9)
    ax.invert_yaxis()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def report(table: pd.DataFrame, points: pd.DataFrame, args, command: str) -> str:
    wide = table.assign(cell=[f"{w}{' (tie)' if t else f' +{m:.1f}%'}" for w, t, m in
                              zip(table.winner, table.tie, table["margin %"])])
    wide = wide.pivot(index="setting", columns="concurrency", values="cell").reindex(setting_order(table))
    robust = [c for c in CONCURRENCY if table[table.concurrency == c].winner.nunique() == 1]
    first = points.iloc[0]
    return "\n".join([
        "# Winner per load across the serving-engine knobs", "",
        f"Command: `{command}`  ", f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  ",
        f"Acceptance source: {first.acceptance_source}; hardware h200, model {args.model}; "
        "requests per point: " + ", ".join(f"{requests_at(c, args)} at concurrency {c}" for c in CONCURRENCY)
        + f"; seeds {args.seeds}; closed loop.  ",
        "Each setting changes one knob from the default (cost model fitted, prefill separate, verify graphs "
        "token-buckets, MoE routing uniform); policies: " + ", ".join(sorted(points.policy.unique())) + " (oracle, "
        "the per-step ceiling, is never a candidate). Margin: winner over runner-up in mean output tokens/s; a tie is a margin within the seed "
        "spread (max − min over seeds) of either.  ",
        "**Predates the Elastic ECHO work** (run on branch `cost` before it merged): re-run after merging.", "",
        markdown(wide.reset_index().rename(columns=str), "{:.1f}"), "",
        f"Same winner under every knob setting at concurrency: {', '.join(map(str, robust)) or 'none'}; "
        f"the winner flips at: {', '.join(str(c) for c in CONCURRENCY if c not in robust) or 'none'}.", "",
        "## Winners with margins", "", markdown(table, "{:.1f}"), "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--per-client", type=int, default=4, help="requests per client at most (see requests_at)")
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policy specs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/knob_sensitivity.md"))
    args = parser.parse_args(argv)
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
        policies = args.policies.split(",")
        from echo_sim.policies.registry import make_policy

        for policy in policies:
            make_policy(policy)
        load_model(args.model)
        SimConfig(requests=args.requests, concurrency=1, model=args.model).validate()
    except ValueError as error:
        print(f"knob_sensitivity: {error}", file=sys.stderr)
        return 2
    command = "python benchmarks/knob_sensitivity.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    csv = args.out.with_suffix(".csv")
    points = run_points(grid(args.model, policies, seeds), args, csv)
    wanted = points.concurrency.map(lambda c: requests_at(c, args))
    points = points[points.seed.isin(seeds) & (points.requests == wanted) & (points.model == args.model)
                    & points.policy.isin(policies)]
    table = winners(points)
    figure(table, args.out.with_suffix(".png"))
    text = report(table, points, args, command)
    args.out.with_suffix(".md.tmp").write_text(text)
    os.replace(args.out.with_suffix(".md.tmp"), args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
