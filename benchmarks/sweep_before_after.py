"""The default sweep under two cost models, side by side: winner per load and each policy's speedup.

    python benchmarks/sweep_before_after.py [--before benchmarks/results/default_sweep_roofline]
                                            [--after benchmarks/results/default_sweep]

Reads each folder's summary.csv (`echo-sim sweep` output) and prints a markdown table: per
concurrency, the best policy (oracle, the per-step ceiling, is not a candidate) with its margin
over the runner-up, and every policy's speedup over ar, before → after. One seed per point, so a
margin is not tested against a seed spread here (knob_sensitivity.md does that, with two seeds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import markdown  # noqa: E402


def best(summary: pd.DataFrame) -> pd.DataFrame:
    """Per concurrency: winner, its tokens/s and its margin over the runner-up (mean over seeds)."""
    means = summary[summary.policy != "oracle"].groupby(["concurrency", "policy"]).output_tokens_per_s.mean()
    rows = []
    for concurrency, part in means.groupby(level=0):
        part = part.droplevel(0).sort_values(ascending=False)
        rows.append({"concurrency": concurrency, "winner": part.index[0],
                     "margin": part.iloc[0] / part.iloc[1] - 1, "tok/s": part.iloc[0]})
    return pd.DataFrame(rows).set_index("concurrency")


def compare(before: pd.DataFrame, after: pd.DataFrame) -> pd.DataFrame:
    b, a = best(before), best(after)
    speedup = {name: frame.groupby(["concurrency", "policy"]).speedup_vs_ar.mean().unstack()
               for name, frame in (("before", before), ("after", after))}
    out = pd.DataFrame({
        "concurrency": b.index,
        "winner before": [f"{w} (+{m:.1%})" for w, m in zip(b.winner, b.margin)],
        "winner after": [f"{w} (+{m:.1%})" for w, m in zip(a.winner, a.margin)]})
    for policy in speedup["after"].columns:
        if policy != "ar":
            out[f"{policy} ×ar"] = [f"{speedup['before'].loc[c, policy]:.2f} → {speedup['after'].loc[c, policy]:.2f}"
                                    for c in b.index]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", type=Path, default=Path("benchmarks/results/default_sweep_roofline"))
    parser.add_argument("--after", type=Path, default=Path("benchmarks/results/default_sweep"))
    args = parser.parse_args(argv)
    frames = []
    for folder in (args.before, args.after):
        path = folder / "summary.csv"
        if not path.is_file():
            print(f"sweep_before_after: {path}: no such file (run echo-sim sweep --out {folder})", file=sys.stderr)
            return 2
        frames.append(pd.read_csv(path))
    for name, frame in zip(("before", "after"), frames):
        print(f"{name}: {args.before if name == 'before' else args.after}: cost {', '.join(sorted(frame.cost_source.unique()))}")
    print()
    print(markdown(compare(*frames)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
