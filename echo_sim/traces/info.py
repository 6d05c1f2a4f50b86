"""`echo-sim trace-info PATH [--json]`: what an acceptance trace holds and what it implies.

Sizes and models; P(draft top-1 = target) (fraction of all positions with draft_rank 0; for a
chain-only import, whose ranks are absent, the fraction whose spine run is >= 1, the same event); mean
accepted tokens per verification, bonus included (τ = Σ committed ÷ Σ steps, replay.py) for greedy
chains k = 1…8 (spine replay) and static trees N = 4…64 (lattice replay); and the calibration
table (cumulative-score bins vs on-path rate). Chain-only traces have no lattices: their static τ
and calibration are null in JSON and "n/a" in text.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import numpy as np

from echo_sim.traces.replay import calibration_table, replay_chain, replay_static
from echo_sim.traces.format import TraceSet, read_trace

CHAIN_LENGTHS = tuple(range(1, 9))
STATIC_SIZES = (4, 8, 16, 32, 64)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="trace file (.trace.npz)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def trace_summary(trace: TraceSet) -> dict:
    """Everything trace-info reports, as plain JSON-ready values."""
    summary = trace.describe()
    summary["p_draft_top1"] = float(np.mean(trace.draft_rank == 0)) if trace.num_positions else None
    summary["tau_chain"] = [replay_chain(trace, k).tau for k in CHAIN_LENGTHS]
    if trace.is_chain_only:
        summary["tau_static"] = None
        summary["calibration"] = None
    else:
        summary["tau_static"] = {str(n): replay_static(trace, n).tau for n in STATIC_SIZES}
        summary["calibration"] = [asdict(row) for row in calibration_table(trace)]
    return summary


def _row(label: str, values) -> str:
    return f"  {label:<10}" + "".join(f"{value:>8}" for value in values)


def format_text(summary: dict) -> str:
    lattice = "none (chain-only)" if summary["chain_only"] else f"width k={summary['width']}, depth S={summary['depth']}"
    top1 = "n/a" if summary["p_draft_top1"] is None else f"{summary['p_draft_top1']:.3f}"
    lines = [
        f"trace        {summary['source']}",
        f"requests     {summary['requests']}",
        f"positions    {summary['positions']}",
        f"nodes        {summary['nodes']}",
        f"lattice      {lattice}",
        f"absent       {', '.join(summary['absent_columns']) or '-'}",
        f"P(draft top-1 = target)  {top1}",
        "",
        "mean accepted tokens per verification (bonus included)",
        _row("chain k", CHAIN_LENGTHS),
        _row("tau", [f"{tau:.3f}" for tau in summary["tau_chain"]]),
        _row("static N", STATIC_SIZES),
    ]
    static = summary["tau_static"]
    lines.append(_row("tau", [f"{static[str(n)]:.3f}" for n in STATIC_SIZES] if static else ["n/a"] * len(STATIC_SIZES)))
    lines += ["", "calibration: cumulative score bin -> fraction of its lattice nodes on-path"]
    if summary["calibration"] is None:
        lines.append("  n/a (chain-only trace: no lattice confidences)")
        return "\n".join(lines)
    lines.append(f"  {'score bin':<16}{'nodes':>10}{'on-path':>10}{'mean score':>12}{'on-path rate':>14}")
    for row in summary["calibration"]:
        bin_text = f"[{row['low']:.3f}, {row['high']:.3f})"
        mean = "-" if row["mean_score"] is None else f"{row['mean_score']:.4f}"
        rate = "-" if row["on_path_rate"] is None else f"{row['on_path_rate']:.4f}"
        lines.append(f"  {bin_text:<16}{row['nodes']:>10}{row['on_path']:>10}{mean:>12}{rate:>14}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    summary = trace_summary(read_trace(args.path))
    if args.json:
        from echo_sim.cli.run import json_safe

        print(json.dumps(json_safe(summary), indent=2, allow_nan=False))
    else:
        print(format_text(summary))
    return 0
