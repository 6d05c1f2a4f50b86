"""Which policy wins at which load, across the step-time model's serving-engine knobs.

    python benchmarks/knob_sensitivity.py [--requests 1000] [--per-client 4] [--seeds 0,1]
                                          [--model llama-3.1-8b] [--policies ar,static,...]
                                          [--out benchmarks/results/knob_sensitivity.md]

Grid: policies × closed-loop concurrency {1, 16, 64, 256} × knob settings (each setting changes one
knob from the default: cost model, prefill mode, verify graphs; MoE routing for an MoE model), on
the shipped MT-Bench trace, seeds as given. The winner at a load is the policy with the highest
mean output tokens/s over seeds (oracle, the per-step ceiling, is not a candidate); a margin over
the runner-up within the seed spread (max − min over seeds of either) is a tie. Rankings: for every
pair of policies at a load, its order under each setting (a gap within the seed spread of either is
a tie); a pair is robust when no setting reverses its order, and flips when one does. Writes the
table (.md), every point (.csv) and a figure (.png): each policy's throughput relative to the best
per setting, one panel per load (crossing lines = a flipped ranking).

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
                                          "verify_graphs", "moe_routing", "draft_extend", "acceptance_source")}}
        pd.DataFrame([row]).to_csv(csv, mode="a", header=not csv.exists(), index=False)
        print(f"[{i}/{len(todo)}] {label} | {policy} @ {concurrency} seed {seed}: "
              f"{row['output_tokens_per_s']:.0f} tok/s", file=sys.stderr)
    return pd.read_csv(csv)


def policy_stats(points: pd.DataFrame) -> pd.DataFrame:
    """Mean and seed spread (max − min) of output tokens/s per (setting, concurrency, policy); no oracle."""
    stats = points[points.policy != "oracle"].groupby(["setting", "concurrency", "policy"]).output_tokens_per_s
    return pd.DataFrame({"mean": stats.mean(), "spread": stats.max() - stats.min()}).reset_index()


def winners(points: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, concurrency): winner, runner-up, margin, seed spread, tie."""
    table = policy_stats(points)
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


def order(a: pd.Series, b: pd.Series) -> str:
    """'>' / '<' when a's mean beats b's by more than the seed spread of either, else '='."""
    gap = a["mean"] - b["mean"]
    return "=" if abs(gap) <= max(a.spread, b.spread) else (">" if gap > 0 else "<")


def pair_orders(points: pd.DataFrame) -> pd.DataFrame:
    """One row per (concurrency, policy pair): its order under each setting and the verdict
    (robust: the same strict order everywhere; robust up to ties: one strict order, ties elsewhere;
    tie: a tie everywhere; flips: both orders occur)."""
    stats = policy_stats(points).set_index(["setting", "concurrency", "policy"])
    settings = [s for s in setting_order(points) if s in set(stats.index.get_level_values(0))]
    rows = []
    for concurrency in sorted(points.concurrency.unique()):
        policies = sorted(points[(points.concurrency == concurrency) & (points.policy != "oracle")].policy.unique())
        for i, a in enumerate(policies):
            for b in policies[i + 1:]:
                signs = {s: order(stats.loc[(s, concurrency, a)], stats.loc[(s, concurrency, b)]) for s in settings}
                strict = set(signs.values()) - {"="}
                verdict = ("flips" if len(strict) == 2 else "tie" if not strict
                           else "robust" if "=" not in signs.values() else "robust up to ties")
                rows.append({"concurrency": int(concurrency), "pair": f"{a} vs {b}", "verdict": verdict, **signs})
    return pd.DataFrame(rows)


def ranking(stats: pd.DataFrame) -> str:
    """'a > b = c > d' for one (setting, concurrency): '=' joins policies tied with the one before."""
    part = stats.sort_values(["mean", "policy"], ascending=[False, True])
    text, previous = "", None
    for _, row in part.iterrows():
        if previous is not None:
            text += " = " if order(previous, row) == "=" else " > "
        text += row.policy
        previous = row
    return text


SHORT = {"default (fitted, separate prefill, token buckets)": "default", "cost roofline": "roofline",
         "prefill mixed": "prefill mixed", "verify graphs per-batch-size N=16": "per-bs graphs N=16",
         "MoE routing gini:0.2": "MoE gini 0.2"}


def setting_order(table: pd.DataFrame) -> list[str]:
    return [s for s in {**SETTINGS, **MOE_SETTING} if s in set(table.setting)]


def figure(points: pd.DataFrame, path: Path) -> None:
    """One panel per load: each policy's mean tokens/s ÷ the best policy's under each setting, with
    the seed spread as error bars; lines that cross between settings are rankings that flip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stats = policy_stats(points)
    settings = setting_order(stats)
    policies = sorted(stats.policy.unique())
    colours = {p: plt.cm.tab10(i % 10) for i, p in enumerate(policies)}
    fig, axes = plt.subplots(1, len(CONCURRENCY), figsize=(4 * len(CONCURRENCY), 4.6), sharey=True)
    for ax, concurrency in zip(axes, CONCURRENCY):
        part = stats[stats.concurrency == concurrency]
        best = part.groupby("setting")["mean"].max()
        for policy in policies:
            rows = part[part.policy == policy].set_index("setting").reindex(settings)
            ax.errorbar(range(len(settings)), rows["mean"] / best[settings].to_numpy(),
                        yerr=rows.spread / 2 / best[settings].to_numpy(), marker="o", ms=4, capsize=2,
                        color=colours[policy], label=policy)
        ax.set_xticks(range(len(settings)), [SHORT.get(s, s) for s in settings], rotation=30, ha="right", fontsize=8)
        ax.set_title(f"concurrency {concurrency}", fontsize=9)
        ax.axhline(1.0, color="grey", lw=0.5)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("output tokens/s ÷ best policy of the setting")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(policies), fontsize=8)
    fig.suptitle("Policy throughput across serving-engine knobs (bars: seed spread; crossings: rankings that flip)",
                 fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


KNOB_COLUMNS = ["cost_source", "cost_model", "prefill_mode", "verify_graphs", "moe_routing", "draft_extend"]


def findings(pairs: pd.DataFrame, table: pd.DataFrame) -> list[str]:
    """Per load: does the default winner survive every setting, and which pairs flip (and where)."""
    default = setting_order(table)[0]
    lines = []
    for concurrency, part in pairs.groupby("concurrency"):
        winner = table[(table.setting == default) & (table.concurrency == concurrency)].winner.iloc[0]
        beaten = []
        for _, row in part.iterrows():
            a, b = row.pair.split(" vs ")
            if winner not in (a, b):
                continue
            other, losing = (b, "<") if a == winner else (a, ">")
            beaten += [f"{other} under {SHORT.get(s, s)}" for s in setting_order(table) if row.get(s) == losing]
        counts = part.verdict.value_counts()
        flips = [f"{row.pair} ({', '.join(f'{SHORT.get(s, s)} {row[s]}' for s in setting_order(table) if row[s] != '=')})"
                 for _, row in part[part.verdict == "flips"].iterrows()]
        lines.append(f"- **concurrency {concurrency}**: default winner {winner} "
                     + ("is never beaten beyond the seed spread under any setting" if not beaten
                        else "is beaten beyond the seed spread by " + "; ".join(beaten))
                     + f". Pairs: {counts.get('robust', 0)} robust, {counts.get('robust up to ties', 0)} robust up to "
                     f"ties, {counts.get('tie', 0)} tied everywhere, {counts.get('flips', 0)} flip"
                     + (": " + "; ".join(flips) if flips else "") + ".")
    reversed_by = {s: sum(((pairs[default] == ">") & (pairs[s] == "<")) | ((pairs[default] == "<") & (pairs[s] == ">")))
                   for s in setting_order(table)[1:]}
    lines.append(f"- Pairs whose order a setting reverses against the default (both beyond the seed spread; of "
                 f"{len(pairs)} pairs over all loads): " + ", ".join(f"{SHORT.get(s, s)} {n}" for s, n in reversed_by.items())
                 + ".")
    return lines


def report(table: pd.DataFrame, points: pd.DataFrame, args, command: str) -> str:
    settings = setting_order(table)
    wide = table.assign(cell=[f"{w}{' (tie)' if t else f' +{m:.1f}%'}" for w, t, m in
                              zip(table.winner, table.tie, table["margin %"])])
    wide = wide.pivot(index="setting", columns="concurrency", values="cell").reindex(settings)
    stats = policy_stats(points)
    chains = pd.DataFrame([{"setting": s, **{str(c): ranking(stats[(stats.setting == s) & (stats.concurrency == c)])
                                             for c in CONCURRENCY}} for s in settings])
    knobs = points.groupby("setting", sort=False)[[c for c in KNOB_COLUMNS if c in points]].first().reindex(settings)
    pairs = pair_orders(points)
    first = points.iloc[0]
    return "\n".join([
        "# Which rankings survive the serving-engine knobs", "",
        f"Command: `{command}`  ", f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  ",
        f"Acceptance source: {first.acceptance_source}; hardware h200, model {args.model}; "
        "requests per point: " + ", ".join(f"{requests_at(c, args)} at concurrency {c}" for c in CONCURRENCY)
        + f"; seeds {args.seeds}; closed loop.  ",
        "Each setting changes one knob from the default (cost model fitted, prefill separate, verify graphs "
        "token-buckets, MoE routing uniform); policies: " + ", ".join(sorted(points.policy.unique())) + " (oracle, "
        "the per-step ceiling, is never a candidate). A gap within the seed spread (max − min over seeds) of "
        "either policy is a tie. Figure: knob_sensitivity.png (throughput ÷ the setting's best, per load).", "",
        "## Findings", "", *findings(pairs, table), "",
        "## Winner per load (margin over the runner-up)", "",
        markdown(wide.reset_index().rename(columns=str), "{:.1f}"), "",
        "## Ranking per setting and load (`=`: within the seed spread of the policy before)", "",
        markdown(chains, "{}"), "",
        "## Every pair of policies: order per setting and verdict", "",
        "`>`: the first policy is ahead beyond the seed spread, `<`: behind, `=`: tie. robust: the same order "
        "under every setting; robust up to ties: never reversed; flips: reversed by some setting.", "",
        markdown(pairs.rename(columns=SHORT), "{}"), "",
        "## Knobs each setting ran with (as recorded by the simulator)", "",
        markdown(knobs.reset_index(), "{}"), "",
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
    figure(points, args.out.with_suffix(".png"))
    text = report(table, points, args, command)
    args.out.with_suffix(".md.tmp").write_text(text)
    os.replace(args.out.with_suffix(".md.tmp"), args.out)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
