"""Figures shared by `echo-sim sweep` and the notebooks (plotting only; no computation here)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: sweeps run on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

METRIC_LABELS = {
    "output_tokens_per_s": "output tokens/s (steady state)",
    "speedup_vs_ar": "speedup over ar (×)",
    "mean_accepted_tokens": "mean accepted tokens per verification",
    "waste": "waste (verified draft nodes not accepted, fraction)",
    "verified_tokens_per_step": "verified tokens per step",
    "tpot_p50": "TPOT p50 (s/token)",
}


def load_column(table: pd.DataFrame) -> str:
    return "rate" if "rate" in table and table["rate"].notna().any() else "concurrency"


def setting_title(table: pd.DataFrame) -> str:
    """The setting a reader must see: cost source (hardware/model) and acceptance source (trace)."""
    parts = []
    for column in ("cost_source", "acceptance_source", "workload"):
        if column in table and table[column].notna().any():
            parts.append(" | ".join(sorted(set(map(str, table[column].dropna())))))
    return "\n".join(parts)


def plot_metric_vs_load(ax, table: pd.DataFrame, metric: str) -> None:
    """One line per policy, mean over seeds with min–max error bars; log-2 x axis."""
    load = load_column(table)
    stats = table.groupby(["policy", load])[metric].agg(["mean", "min", "max"]).reset_index()
    for policy, part in stats.groupby("policy", sort=False):
        part = part.sort_values(load)
        style = dict(linestyle="--", color="black") if policy.startswith("oracle") else {}
        ax.errorbar(part[load], part["mean"],
                    yerr=[part["mean"] - part["min"], part["max"] - part["mean"]],
                    marker="o", markersize=3, capsize=2, label=policy, **style)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients" if load == "concurrency" else "arrival rate (requests/s)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(True, which="both", alpha=0.3)


def metric_figure(table: pd.DataFrame, metric: str, title: str):
    fig, ax = plt.subplots(figsize=(8, 5))
    plot_metric_vs_load(ax, table, metric)
    if metric == "speedup_vs_ar":
        ax.axhline(1.0, color="grey", linewidth=0.8)
    ax.set_title(f"{title}\n{setting_title(table)}", fontsize=9)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig


def save_sweep_plots(table: pd.DataFrame, out: Path) -> list[Path]:
    from echo_sim.atomic import write_bytes_atomic
    import io

    written = []
    for metric, name, title in (
        ("output_tokens_per_s", "throughput_vs_concurrency.png", "Output throughput vs load"),
        ("speedup_vs_ar", "speedup_vs_concurrency.png", "Speedup over autoregressive decoding vs load"),
    ):
        fig = metric_figure(table, metric, title)
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=120)
        plt.close(fig)
        write_bytes_atomic(Path(out) / name, buffer.getvalue())
        written.append(Path(out) / name)
    return written
