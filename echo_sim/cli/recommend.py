"""What the sweep concludes: the results tables and, per load, the winning policy as an SGLang launch.

Ranking (one rule per load kind; a margin within the seed spread, max − min over seeds, is a tie):
    closed loop   highest mean output tokens/s
    open loop     highest mean SLO attainment (DistServe: the share of requests meeting every SLO;
                  at one arrival rate that ranks SLO goodput, req/s meeting every SLO, the same way);
                  ties on attainment (e.g. every policy meets the SLOs at a light load) are broken by
                  the lowest latency headroom: max over the SLOs of percentile ÷ bound
"""

from __future__ import annotations

import pandas as pd

from echo_sim.policies.registry import make_policy
from echo_sim.slo import LATENCY_FIELDS

FACETS = ("workload", "hardware", "model")  # never averaged over: one table block / plot panel each
SPREAD_METRICS = ("output_tokens_per_s", "slo_attainment", "slo_headroom")


def load_column(table: pd.DataFrame) -> str:
    return "rate" if table["rate"].notna().any() else "concurrency"


def facets(table: pd.DataFrame) -> list[str]:
    return [column for column in FACETS if column in table]


def facet_label(keys, columns: list[str]) -> str:
    keys = keys if isinstance(keys, tuple) else (keys,)
    return ", ".join(f"{column} {value}" for column, value in zip(columns, keys))


def mean_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    """Means over seeds per facet, load and policy; `<metric>_spread` = max − min over seeds."""
    load = load_column(table)
    keys = [*facets(table), load, "policy"]
    numeric = [c for c in ("output_tokens_per_s", "speedup_vs_ar", "mean_accepted_tokens", "waste",
                           *LATENCY_FIELDS, "slo_attainment", "slo_goodput", "slo_headroom") if c in table]
    grouped = table.groupby(keys, sort=True)
    means = grouped[numeric].mean()
    spread_columns = [c for c in SPREAD_METRICS if c in table]
    spreads = (grouped[spread_columns].max() - grouped[spread_columns].min()).add_suffix("_spread")
    return means.join(spreads).reset_index()


def format_table(table: pd.DataFrame) -> str:
    """Output tokens/s per policy (columns) and load (rows), with speedup over ar in brackets."""
    load = load_column(table)
    means = mean_over_seeds(table)
    blocks = []
    columns = facets(table)
    for keys, part in means.groupby(columns):
        cells = part.assign(cell=[f"{t:9.0f} ({s:4.2f}x)" for t, s in
                                  zip(part["output_tokens_per_s"], part["speedup_vs_ar"])])
        grid = cells.pivot(index=load, columns="policy", values="cell")
        blocks.append(f"{facet_label(keys, columns)}: output tokens/s (speedup over ar)\n{grid.to_string()}")
    return "\n\n".join(blocks)


def format_latency_table(table: pd.DataFrame) -> str:
    """Per load and policy: TTFT, TPOT, ITL, end-to-end latency at p50/p90/p99 in ms (and SLO
    attainment when the sweep has SLOs); means over seeds."""
    load = load_column(table)
    means = mean_over_seeds(table)
    columns = facets(table)
    blocks = []
    for keys, part in means.groupby(columns):
        shown = part[[load, "policy"]].copy()
        for field in LATENCY_FIELDS:
            shown[field] = (part[field] * 1e3).round(1)
        if "slo_attainment" in part and part["slo_attainment"].notna().any():
            shown["SLO met"] = [f"{a:.1%}" for a in part["slo_attainment"]]
        title = f"{facet_label(keys, columns)}: latency in ms (mean over seeds)"
        if "slo" in table and table["slo"].notna().any():
            title += f"; SLO met = share of requests meeting {table['slo'].dropna().iloc[0]}"
        blocks.append(f"{title}\n{shown.to_string(index=False)}")
    return "\n\n".join(blocks)


def sglang_flags_text(spec: str) -> str:
    policy = make_policy(spec)
    flags = policy.sglang_flags()
    if not flags:
        return policy.note or "(no speculative decoding flags)"
    return " ".join(f"{flag} {value}" for flag, value in flags.items())


def launch_line(spec: str, target: str) -> str:
    """The SGLang server command for a policy: target and draft paths are placeholders to fill in.

    Policies without SGLang flags (other than ar, which launches without speculation) get their note.
    """
    policy = make_policy(spec)
    base = f"python -m sglang.launch_server --model-path <{target} weights>"
    flags = policy.sglang_flags()
    if policy.name == "ar":
        return base
    if not flags:
        return f"(no SGLang launch line: {getattr(policy, 'note', '') or 'not an SGLang option'})"
    line = (f"{base} --speculative-algorithm EAGLE --speculative-draft-model-path <EAGLE draft for {target}> "
            + " ".join(f"{flag} {value}" for flag, value in flags.items()))
    note = getattr(policy, "note", "")
    return line + (f"\n      (note: {note})" if note else "")


def is_tie(margin: float, *spreads: float) -> bool:
    """A margin no larger than the seed spread (max − min over seeds) of either side is a tie."""
    return margin <= max(spreads, default=0.0)


def realisable(means: pd.DataFrame) -> pd.DataFrame:
    return means[~means["policy"].str.startswith("oracle")]  # oracle is a ceiling, not a policy


def best_policy(part: pd.DataFrame) -> pd.Series:
    """The row with the highest output tokens/s (the closed-loop winner at one load)."""
    return part.loc[part["output_tokens_per_s"].idxmax()]


def tied_with_best(part: pd.DataFrame, metric: str, higher_is_better: bool) -> pd.DataFrame:
    """The rows of `part` whose `metric` is within the seed spread of the best row's (best first)."""
    ordered = part.sort_values(metric, ascending=not higher_is_better, kind="stable")
    best = ordered.iloc[0]
    spread = f"{metric}_spread"
    gaps = (best[metric] - ordered[metric]).abs()
    return ordered[[is_tie(g, best[spread], s) for g, s in zip(gaps, ordered[spread])]]


def rank_by_slo(part: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(tied rows, best first; the basis of the decision) for one open-loop load."""
    level = tied_with_best(part, "slo_attainment", higher_is_better=True)
    if len(level) == 1:
        return level, "highest SLO attainment"
    return tied_with_best(level, "slo_headroom", higher_is_better=False), \
        f"SLO attainment tied ({', '.join(level['policy'])}); broken by the lowest latency headroom"


def format_recommendations(table: pd.DataFrame) -> str:
    """Per facet and load: the winning policy (module docstring) as an SGLang launch line."""
    load = load_column(table)
    means = realisable(mean_over_seeds(table))
    by_slo = load == "rate" and "slo_attainment" in means and means["slo_attainment"].notna().any()
    slo = table["slo"].dropna().iloc[0] if by_slo else None
    basis = f"SLO attainment under {slo}" if by_slo else "highest output tokens/s"
    lines = [f"recommendation ({basis} per load; margins within the seed spread are ties):"]
    columns = facets(table)
    for keys, part in means.groupby([*columns, load], sort=True):
        named = [str(k) for c, k in zip(columns, keys) if c == "workload" or table[c].nunique() > 1]
        where = " ".join(named) + f" {load}={keys[-1]:g}"
        if by_slo:
            tied, why = rank_by_slo(part)
        else:
            tied, why = tied_with_best(part, "output_tokens_per_s", higher_is_better=True), "highest tokens/s"
        best = tied.iloc[0]
        result = (f"{best['output_tokens_per_s']:.0f} tok/s, {best['speedup_vs_ar']:.2f}x ar" if not by_slo else
                  f"SLO met by {best['slo_attainment']:.1%} of requests, {best['slo_goodput']:.1f} req/s, "
                  f"headroom {best['slo_headroom']:.2f}")
        if len(tied) > 1:
            lines.append(f"  {where}: tie {', '.join(tied['policy'])} ({why}; best {best['policy']}: {result})")
        else:
            lines.append(f"  {where}: {best['policy']} ({result}; {why}{_margin(part, best, by_slo)})")
        target = table["model"].dropna().iloc[0] if "model" in table and table["model"].notna().any() else "target"
        lines.append(f"      {launch_line(best['policy'], target)}")
    return "\n".join(lines)


def _margin(part: pd.DataFrame, best: pd.Series, by_slo: bool) -> str:
    others = part.drop(index=best.name)
    if others.empty:
        return ""
    if by_slo:
        gain = best["slo_attainment"] - others["slo_attainment"].max()
        if gain > 0:
            return f", +{gain:.1%} attainment over next"
        return f", headroom {others['slo_headroom'].min() - best['slo_headroom']:.2f} lower than next"
    runner_up = others["output_tokens_per_s"].max()
    return f", +{best['output_tokens_per_s'] / runner_up - 1:.1%} over next"
