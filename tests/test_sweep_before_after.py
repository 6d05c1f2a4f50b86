"""benchmarks/sweep_before_after.py: winner per load and speedups from two sweeps' summaries."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_modules import load_benchmark  # noqa: E402


def summary(tokens: dict) -> pd.DataFrame:
    """tokens: (concurrency, policy) -> tokens/s; speedup over ar at the same load."""
    rows = [{"concurrency": c, "policy": p, "output_tokens_per_s": v} for (c, p), v in tokens.items()]
    frame = pd.DataFrame(rows)
    ar = frame[frame.policy == "ar"].set_index("concurrency").output_tokens_per_s
    return frame.assign(speedup_vs_ar=frame.output_tokens_per_s / frame.concurrency.map(ar))


def test_the_oracle_never_wins_and_speedups_read_before_to_after():
    tool = load_benchmark("sweep_before_after")
    before = summary({(1, "ar"): 100, (1, "echo"): 300, (1, "static"): 250, (1, "oracle"): 900})
    after = summary({(1, "ar"): 100, (1, "echo"): 200, (1, "static"): 220, (1, "oracle"): 900})
    row = tool.compare(before, after).iloc[0]
    assert row["winner before"] == "echo (+20.0%)"
    assert row["winner after"] == "static (+10.0%)"
    assert row["echo ×ar"] == "3.00 → 2.00"
    assert "ar ×ar" not in row.index
