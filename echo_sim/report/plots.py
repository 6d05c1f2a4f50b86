"""Figures shared by `echo-sim sweep` and the notebooks (plotting only; no computation here)."""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: sweeps run on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from echo_sim.atomic import write_bytes_atomic  # noqa: E402

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


# Sweep plots: a log y axis for throughput (it spans decades from 1 to 256 clients, a linear axis
# squashes 1-16 clients flat); speedups stay linear around 1.
LOG_Y_METRICS = ("output_tokens_per_s",)
VARIANT_LINESTYLES = ("--", ":", "-.", (0, (5, 1, 1, 1)))


def policy_styles(policies) -> dict[str, dict]:
    """Line style per policy spec: the notebooks' colour of its policy name (policy_colors over the
    registry's order, so `echo` is the same colour everywhere); variants (`echo:gate=off`) share
    their policy's colour with a dashed/dotted line."""
    from echo_sim.policies.registry import POLICY_NAMES

    colors = policy_colors(POLICY_NAMES)
    styles, variants = {}, {}
    for spec in dict.fromkeys(policies):
        name = spec.split(":", 1)[0]
        if spec == name:
            styles[spec] = dict(color=colors.get(name, "grey"), linestyle="--" if name == CEILING_POLICY else "-")
        else:
            count = variants[name] = variants.get(name, -1) + 1
            styles[spec] = dict(color=colors.get(name, "grey"),
                                linestyle=VARIANT_LINESTYLES[count % len(VARIANT_LINESTYLES)])
    return styles


def plot_metric_vs_load(ax, table: pd.DataFrame, metric: str) -> None:
    """One line per policy, mean over seeds with min–max error bars; a star on each load's winner
    (highest output tokens/s, the recommendation's rule); log-2 x axis labelled 1, 2, 4, …"""
    from echo_sim.cli.recommend import best_policy, realisable

    load = load_column(table)
    stats = table.groupby(["policy", load])[metric].agg(["mean", "min", "max"]).reset_index()
    for policy, style in policy_styles(table["policy"]).items():
        part = stats[stats["policy"] == policy].sort_values(load)
        ax.errorbar(part[load], part["mean"], yerr=[part["mean"] - part["min"], part["max"] - part["mean"]],
                    marker="o", markersize=3, capsize=2, label=policy, **style)
    columns = list(dict.fromkeys(["output_tokens_per_s", metric]))
    means = table.groupby(["policy", load])[columns].mean().reset_index()
    winners = pd.DataFrame([best_policy(part) for _, part in realisable(means).groupby(load)])
    if len(winners):
        ax.scatter(winners[load], winners[metric], marker="*", s=160, facecolor="none", edgecolor="black",
                   linewidth=1.2, zorder=4, label="winner at this load")
    ax.set_xscale("log", base=2)
    loads = np.sort(table[load].dropna().unique())
    if load == "concurrency":
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator(loads))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    if metric in LOG_Y_METRICS and (table[metric] > 0).all():
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
    ax.set_xlabel("concurrent clients (log scale)" if load == "concurrency" else "arrival rate (requests/s, log scale)")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric) + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.grid(True, which="both", alpha=0.3)


def facet_groups(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) per combination of the facet columns that vary (workload, hardware, model):
    one panel each, so curves are never averaged across workloads or cost settings."""
    from echo_sim.cli.recommend import FACETS

    varying = [c for c in FACETS if c in table and table[c].nunique() > 1]
    if not varying:
        return [("", table)]
    return [(", ".join(f"{c} {v}" for c, v in zip(varying, keys if isinstance(keys, tuple) else (keys,))), part)
            for keys, part in table.groupby(varying, sort=True)]


def _wrapped_setting(table: pd.DataFrame) -> str:
    return "\n".join(textwrap.fill(line, 110) for line in setting_title(table).splitlines())


def metric_figure(table: pd.DataFrame, metric: str, title: str):
    """One panel per facet (facet_groups), stacked; one legend."""
    groups = facet_groups(table)
    fig, axes = plt.subplots(len(groups), 1, figsize=(9, 5.5 * len(groups)), squeeze=False)
    for index, (ax, (label, part)) in enumerate(zip(axes[:, 0], groups)):
        plot_metric_vs_load(ax, part, metric)
        if metric == "speedup_vs_ar":
            ax.axhline(1.0, color="grey", linewidth=0.8)
        heading = f"{title}\n{_wrapped_setting(table)}" if index == 0 else ""
        ax.set_title("\n".join(filter(None, [heading, label])), fontsize=9)
    axes[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    return fig


# Open-loop sweeps: latency against arrival rate (p99 thick, p50 thin) and throughput-latency curves.
LATENCY_PANELS = (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2e", "end-to-end latency"))
THROUGHPUT_LATENCY_PANELS = (("tpot_p99", "TPOT p99"), ("ttft_p90", "TTFT p90"), ("e2e_p90", "end-to-end p90"))


def _open_loop_figure(table: pd.DataFrame, panels, title: str, draw):
    groups = facet_groups(table)
    fig, axes = plt.subplots(len(groups), len(panels), figsize=(4.6 * len(panels), 4.2 * len(groups)),
                             squeeze=False)
    styles = policy_styles(table["policy"])
    for row, (label, part) in enumerate(groups):
        means = part.groupby(["policy", "rate"]).mean(numeric_only=True).reset_index()
        for column, panel in enumerate(panels):
            ax = axes[row, column]
            for policy, style in styles.items():
                line = means[means["policy"] == policy].sort_values("rate")
                if len(line):
                    draw(ax, line, panel, policy, style)
            ax.grid(True, which="both", alpha=0.3)
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda y, _: f"{y:g}"))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            if label:
                ax.set_title(label, fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)
    fig.suptitle(f"{title}\n{_wrapped_setting(table)}", fontsize=9)
    fig.tight_layout()
    return fig


def latency_vs_rate_figure(table: pd.DataFrame):
    def draw(ax, line, panel, policy, style):
        metric, name = panel
        ax.plot(line["rate"], line[f"{metric}_p99"] * 1e3, marker="o", markersize=3, linewidth=1.6,
                label=policy, **style)
        ax.plot(line["rate"], line[f"{metric}_p50"] * 1e3, linewidth=0.8, alpha=0.6, **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.set_xlabel("arrival rate (requests/s, log scale)")
        ax.set_ylabel(f"{name} (ms)")
    return _open_loop_figure(table, LATENCY_PANELS, "Latency vs arrival rate (mean over seeds; thick p99, "
                             "thin p50; log scales)", draw)


def throughput_latency_figure(table: pd.DataFrame):
    def draw(ax, line, panel, policy, style):
        metric, name = panel
        ax.plot(line["output_tokens_per_s"], line[metric] * 1e3, marker="o", markersize=3, label=policy, **style)
        ax.set_yscale("log")
        ax.set_xlabel("output tokens/s (one point per arrival rate)")
        ax.set_ylabel(f"{name} (ms, log scale)")
    return _open_loop_figure(table, THROUGHPUT_LATENCY_PANELS, "Throughput vs latency (mean over seeds)", draw)


def save_sweep_plots(table: pd.DataFrame, out: Path) -> list[Path]:
    """Closed loop: throughput and speedup vs clients. Open loop: latency vs arrival rate and
    throughput-latency curves. Either way one panel per workload / hardware / model."""
    if load_column(table) == "rate":
        figures = ((latency_vs_rate_figure(table), "latency_vs_rate.png"),
                   (throughput_latency_figure(table), "throughput_vs_latency.png"))
    else:
        figures = ((metric_figure(table, "output_tokens_per_s", "Output throughput vs load"),
                    "throughput_vs_concurrency.png"),
                   (metric_figure(table, "speedup_vs_ar", "Speedup over autoregressive decoding vs load"),
                    "speedup_vs_concurrency.png"))
    written = []
    for fig, name in figures:
        written.append(save_figure(fig, Path(out) / name, dpi=120))  # bbox tight: nothing clipped
        plt.close(fig)
    return written


# ------------------------------------------------------------------ notebooks (notebooks/*.ipynb)

CEILING_POLICY = "oracle"
# Two-line axis labels for the notebooks' multi-panel figures, where METRIC_LABELS' run too long.
PANEL_LABELS = {
    "waste": "waste: fraction of verified\ndraft nodes not accepted",
    "mean_accepted_tokens": "mean accepted tokens per\nverification (MAT, bonus included)",
}
PALETTE = ("#7f7f7f", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#d62728", "#e377c2",
           "#17becf", "#bcbd22")


def policy_colors(policies) -> dict[str, str]:
    """A fixed colour per policy, in the order given (the same order gives the same colours in
    every figure); the ceiling (`oracle`) is always black."""
    colors, index = {}, 0
    for policy in dict.fromkeys(policies):
        if policy.startswith(CEILING_POLICY):
            colors[policy] = "black"
        else:
            colors[policy] = PALETTE[index % len(PALETTE)]
            index += 1
    return colors


def plot_policies_vs_load(ax, table: pd.DataFrame, metric: str, colors: dict[str, str]) -> None:
    """One line per policy in `colors` order (mean over seeds); the oracle dashed, as the ceiling."""
    load = load_column(table)
    means = table.groupby(["policy", load])[metric].mean().reset_index()
    for policy, color in colors.items():
        part = means[means["policy"] == policy].sort_values(load)
        if part.empty:
            continue
        ceiling = policy.startswith(CEILING_POLICY)
        ax.plot(part[load], part[metric], color=color, marker="" if ceiling else "o", markersize=3,
                linestyle="--" if ceiling else "-", linewidth=1.6 if policy.startswith("echo") else 1.1,
                label=f"{policy} (per-step ceiling)" if ceiling else policy)
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel("concurrent clients (closed loop, log scale)")
    ax.set_ylabel(PANEL_LABELS.get(metric) or METRIC_LABELS.get(metric, metric))
    ax.grid(True, which="both", alpha=0.3)


def policy_panels(table: pd.DataFrame, metrics: list[str], row_titles: dict[tuple[str, str], str],
                  colors: dict[str, str], title: str):
    """Rows: cost settings (hardware, model) in `row_titles` order; columns: metrics. One legend."""
    fig, axes = plt.subplots(len(row_titles), len(metrics), figsize=(6 * len(metrics), 4.2 * len(row_titles)),
                             squeeze=False)
    for row, ((hardware, model), row_title) in enumerate(row_titles.items()):
        part = table[(table["hardware"] == hardware) & (table["model"] == model)]
        for col, metric in enumerate(metrics):
            ax = axes[row][col]
            plot_policies_vs_load(ax, part, metric, colors)
            if metric == "speedup_vs_ar":
                ax.axhline(1.0, color="grey", linewidth=0.8)
            ax.set_title(row_title, fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 8), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 1))  # tight_layout makes room for the suptitle itself
    return fig


def plot_supertree_snapshot(ax, snapshot: pd.DataFrame, max_width: int) -> None:
    """One engine step of echo: a bar per request (batch order sorted by depth) as tall as its
    selected depth, coloured by its selected width; black ticks mark the depth actually accepted."""
    rank = np.arange(len(snapshot))
    cmap = plt.get_cmap("viridis", max_width + 1)
    ax.bar(rank, snapshot["selected_depth"], width=0.85, color=cmap(snapshot["selected_width"].to_numpy()))
    drafted = snapshot["selected_depth"].to_numpy() > 0  # a request without drafts accepts nothing
    ax.scatter(rank[drafted], snapshot["accepted_depth"].to_numpy()[drafted], marker="_", color="black",
               s=60 if len(rank) < 40 else 12, label="accepted depth", zorder=3)
    mappable = plt.cm.ScalarMappable(cmap=cmap, norm=matplotlib.colors.Normalize(-0.5, max_width + 0.5))
    ax.figure.colorbar(mappable, ax=ax, ticks=range(max_width + 1), label="selected width (most nodes on one level)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.yaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("request in the batch (sorted by selected depth)")
    ax.set_ylabel("selected depth (draft levels)")
    ax.legend(fontsize=8, loc="upper right")


def plot_extent_heatmap(ax, extents: pd.DataFrame, max_depth: int, max_width: int) -> None:
    """Share of request-steps (%) at each (selected depth, selected width)."""
    counts = np.zeros((max_width + 1, max_depth + 1))
    np.add.at(counts, (extents["selected_width"].to_numpy(), extents["selected_depth"].to_numpy()), 1)
    share = 100 * counts / max(counts.sum(), 1)
    image = ax.imshow(share, origin="lower", cmap="magma_r", aspect="auto")
    for (w, d), value in np.ndenumerate(share):
        if value >= 0.5:
            ax.text(d, w, f"{value:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if value > share.max() / 2 else "black")
    ax.figure.colorbar(image, ax=ax, label="request-steps (%)")
    ax.set_xticks(range(max_depth + 1))
    ax.set_yticks(range(max_width + 1))
    ax.set_xlabel("selected depth (draft levels)")
    ax.set_ylabel("selected width (most nodes on one level)")


def plot_budget_vs_batch(ax, steps: pd.DataFrame, fixed_per_request: int) -> None:
    """echo's chosen budget B (draft nodes beyond the roots) against the step's batch size,
    coloured by the sweep's concurrency; the line is the fixed budget bs·(N−1) of `static`."""
    loads = np.sort(steps["concurrency"].unique())
    cmap = plt.get_cmap("plasma", len(loads) + 1)
    for i, load in enumerate(loads):
        part = steps[steps["concurrency"] == load]
        ax.scatter(part["batch_size"], part["budget"], s=5, alpha=0.35, color=cmap(i), label=f"C = {load}")
    sizes = np.arange(1, int(steps["batch_size"].max()) + 1)
    ax.plot(sizes, fixed_per_request * sizes, color="black", linestyle=":", linewidth=1,
            label=f"fixed: bs·{fixed_per_request}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("symlog", linthresh=1)
    ax.set_ylim(bottom=0)
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.set_xlabel("decoding requests in the step (batch size, log scale)")
    ax.set_ylabel("chosen budget B (draft tokens verified, symlog)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2, markerscale=3)


def plot_grouped_bars(ax, table: pd.DataFrame, group: str, bar: str, value: str, bar_order: list) -> None:
    """Bars of `value`: one group per `group` value (sorted), one bar per `bar` value in bar_order."""
    groups = np.sort(table[group].unique())
    width = 0.8 / len(bar_order)
    for i, name in enumerate(bar_order):
        part = table[table[bar] == name].set_index(group).reindex(groups)
        ax.bar(np.arange(len(groups)) + (i - (len(bar_order) - 1) / 2) * width, part[value], width=width,
               label=name, color=PALETTE[i % len(PALETTE)])
    ax.set_xticks(np.arange(len(groups)), [f"{g}" for g in groups])
    ax.grid(True, axis="y", alpha=0.3)


def plot_parity(ax, measured, simulated, labels, unit: str, estimate: str = "simulated") -> None:
    """`estimate` (simulated, fitted, …) against measured, log-log, with y = x and ±25 % bands; one
    marker group per label."""
    measured, simulated, labels = np.asarray(measured, float), np.asarray(simulated, float), np.asarray(labels)
    for i, label in enumerate(dict.fromkeys(labels)):
        mask = labels == label
        ax.scatter(measured[mask], simulated[mask], s=14, alpha=0.7, color=PALETTE[(i + 1) % len(PALETTE)],
                   label=str(label))
    values = np.concatenate([measured, simulated])
    values = values[values > 0]
    low, high = values.min() / 1.3, values.max() * 1.3
    line = np.array([low, high])
    ax.plot(line, line, color="black", linewidth=0.8, label=f"{estimate} = measured")
    ax.fill_between(line, line / 1.25, line * 1.25, color="grey", alpha=0.15, label="±25 %")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    narrow = high / low < 100  # under two decades: label 1-2-5 steps, not only powers of ten
    for axis in (ax.xaxis, ax.yaxis):
        if narrow:
            axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"measured ({unit})")
    ax.set_ylabel(f"{estimate} ({unit})")
    ax.grid(True, which="both", alpha=0.3)


def save_figure(fig, path: Path, dpi: int = 130) -> Path:
    """Write the figure as PNG atomically (a reader never sees a half-written file)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    write_bytes_atomic(Path(path), buffer.getvalue())
    return Path(path)


# ------------------------------------------------------------------ echo-sim capacity

def save_capacity_plot(seeds_table: pd.DataFrame, summary: pd.DataFrame, title: str, path: Path) -> Path:
    """Capacity per policy: a bar at the mean over seeds, each seed's bracket [passing, failing] as
    a vertical segment beside it (so the search tolerance and the seed spread are both visible)."""
    colors = policy_colors(summary["policy"])
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(summary) + 2), 4.5))
    for x, (_, row) in enumerate(summary.iterrows()):
        ax.bar(x, row["capacity"], color=colors[row["policy"]], alpha=0.55, width=0.7)
        seeds = seeds_table[seeds_table["policy"] == row["policy"]].reset_index(drop=True)
        offsets = np.linspace(-0.2, 0.2, len(seeds)) if len(seeds) > 1 else [0.0]
        for dx, (_, seed) in zip(offsets, seeds.iterrows()):
            low = seed["passing"] if seed["passing"] == seed["passing"] else 0.0
            high = seed["failing"] if seed["failing"] == seed["failing"] else low
            ax.plot([x + dx, x + dx], [low, high], color="black", linewidth=1.5)
            ax.plot([x + dx], [low], marker="_", color="black", markersize=8)
    ax.set_xticks(range(len(summary)), summary["policy"], rotation=30, ha="right")
    ax.set_ylabel("capacity: highest arrival rate meeting the SLOs (req/s)")
    ax.set_title(title, fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    saved = save_figure(fig, path)
    plt.close(fig)
    return saved
