"""What the sweep concludes: the results table and, per load, the winning policy as server flags."""

from __future__ import annotations

import pandas as pd

from echo_sim.policies.registry import make_policy


def load_column(table: pd.DataFrame) -> str:
    return "rate" if table["rate"].notna().any() else "concurrency"


def mean_over_seeds(table: pd.DataFrame) -> pd.DataFrame:
    load = load_column(table)
    keys = ["workload", load, "policy"]
    numeric = ["output_tokens_per_s", "speedup_vs_ar", "mean_accepted_tokens", "waste", "tpot_p50"]
    return table.groupby(keys, sort=True)[numeric].mean().reset_index()


def format_table(table: pd.DataFrame) -> str:
    """Output tokens/s per policy (columns) and load (rows), with speedup over ar in brackets."""
    load = load_column(table)
    means = mean_over_seeds(table)
    blocks = []
    for workload, part in means.groupby("workload"):
        cells = part.assign(cell=[f"{t:9.0f} ({s:4.2f}x)" for t, s in
                                  zip(part["output_tokens_per_s"], part["speedup_vs_ar"])])
        grid = cells.pivot(index=load, columns="policy", values="cell")
        blocks.append(f"workload {workload}: output tokens/s (speedup over ar)\n{grid.to_string()}")
    return "\n\n".join(blocks)


def sglang_flags_text(spec: str) -> str:
    policy = make_policy(spec)
    flags = policy.sglang_flags()
    if not flags:
        return policy.note or "(no speculative decoding flags)"
    return " ".join(f"{flag} {value}" for flag, value in flags.items())


def format_recommendations(table: pd.DataFrame) -> str:
    """Per workload and load: the policy with the highest mean output tokens/s, as SGLang flags."""
    load = load_column(table)
    means = mean_over_seeds(table)
    lines = ["recommendation (highest output tokens/s per load):"]
    realisable = means[~means["policy"].str.startswith("oracle")]  # oracle is a ceiling, not a policy
    for (workload, value), part in realisable.groupby(["workload", load], sort=True):
        best = part.loc[part["output_tokens_per_s"].idxmax()]
        runner_up = part.drop(index=best.name)["output_tokens_per_s"].max()
        margin = best["output_tokens_per_s"] / runner_up - 1 if runner_up == runner_up else float("nan")
        lines.append(
            f"  {workload} {load}={value:g}: {best['policy']} "
            f"({best['output_tokens_per_s']:.0f} tok/s, {best['speedup_vs_ar']:.2f}x ar, "
            f"+{margin:.1%} over next) -> {sglang_flags_text(best['policy'])}"
        )
    return "\n".join(lines)
