"""benchmarks/knob_sensitivity.py: rankings, ties by seed spread, flipped pairs (synthetic points)."""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_modules import load_benchmark  # noqa: E402


def knob_sensitivity():
    return load_benchmark("knob_sensitivity")


DEFAULT, ROOFLINE = "default (fitted, separate prefill, token buckets)", "cost roofline"


def points(values: dict) -> pd.DataFrame:
    """values: (setting, policy) -> tokens/s of seeds 0 and 1, at concurrency 16."""
    return pd.DataFrame([{"setting": s, "policy": p, "concurrency": 16, "seed": seed, "output_tokens_per_s": v}
                         for (s, p), seeds in values.items() for seed, v in enumerate(seeds)])


def test_a_reversed_pair_flips_a_gap_within_the_seed_spread_is_a_tie():
    ks = knob_sensitivity()
    data = points({(DEFAULT, "a"): (100, 102), (DEFAULT, "b"): (90, 91), (DEFAULT, "c"): (95, 105),
                   (ROOFLINE, "a"): (80, 81), (ROOFLINE, "b"): (90, 90), (ROOFLINE, "c"): (60, 61),
                   (ROOFLINE, "oracle"): (500, 500)})
    pairs = ks.pair_orders(data).set_index("pair")
    assert pairs.loc["a vs b", "verdict"] == "flips"
    assert (pairs.loc["a vs b", DEFAULT], pairs.loc["a vs b", ROOFLINE]) == (">", "<")
    # a vs c: 101 vs 100 with c's spread 10 is a tie under the default, a is ahead under roofline
    assert pairs.loc["a vs c", "verdict"] == "robust up to ties"
    assert pairs.loc["b vs c", "verdict"] == "robust up to ties"  # 90.5 vs 100 within c's spread 10
    assert "oracle" not in " ".join(pairs.index)
    stats = ks.policy_stats(data)
    assert ks.ranking(stats[stats.setting == DEFAULT]) == "a = c = b"  # each "=" against the policy before
    table = ks.winners(data)
    assert table.set_index("setting").loc[DEFAULT, "tie"]
    assert table.set_index("setting").loc[ROOFLINE, "winner"] == "b"
    finding = ks.findings(ks.pair_orders(data), table)[0]
    assert "default winner a is beaten beyond the seed spread by b under roofline." in finding


def test_a_policy_whose_name_contains_the_winners_is_not_the_winner():
    ks = knob_sensitivity()
    data = points({(DEFAULT, "echo"): (100, 100), (DEFAULT, "echo:gate=off"): (90, 90), (DEFAULT, "ar"): (50, 50),
                   (ROOFLINE, "echo"): (100, 100), (ROOFLINE, "echo:gate=off"): (80, 80), (ROOFLINE, "ar"): (70, 70)})
    finding = ks.findings(ks.pair_orders(data), ks.winners(data))[0]
    assert "default winner echo is never beaten" in finding, finding
