"""Two sweep summary.csv files equal field by field, the fields timing the run itself aside.

    python benchmarks/compare_summaries.py BEFORE/summary.csv AFTER/summary.csv

Rows are matched by (policy, concurrency, rate, workload, hardware, model, seed); values compare
exactly (floats as written, no tolerance). Prints every differing row and field and the two runs'
summed sim_cpu_seconds; exits 1 when anything differs.
"""

from __future__ import annotations

import sys

import pandas as pd

KEY = ["policy", "concurrency", "rate", "workload", "hardware", "model", "seed"]
TIMING_FIELDS = {"sim_cpu_seconds"}


def compare(before_path: str, after_path: str) -> list[str]:
    read = lambda path: pd.read_csv(path, dtype=str, keep_default_na=False).set_index(KEY).sort_index()  # noqa: E731
    before, after = read(before_path), read(after_path)
    problems = []
    if list(before.columns) != list(after.columns):
        problems.append(f"columns differ: {list(before.columns)} vs {list(after.columns)}")
    if set(before.index) != set(after.index):
        problems.append(f"rows differ: only before {sorted(set(before.index) - set(after.index))}, "
                        f"only after {sorted(set(after.index) - set(before.index))}")
    for key in sorted(set(before.index) & set(after.index)):
        for field in before.columns:
            if field in TIMING_FIELDS or field not in after.columns:
                continue
            if before.at[key, field] != after.at[key, field]:
                problems.append(f"{key} {field}: {before.at[key, field]} != {after.at[key, field]}")
    return problems


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip())
        return 2
    problems = compare(*argv)
    for line in problems:
        print(line)
    cpu = [pd.read_csv(path)["sim_cpu_seconds"].sum() for path in argv]
    rows = len(pd.read_csv(argv[0]))
    print(f"{'identical' if not problems else f'{len(problems)} differences'} over {rows} rows "
          f"(timing fields aside); sim CPU-s {cpu[0]:.1f} -> {cpu[1]:.1f} ({cpu[0] / cpu[1]:.2f}x)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
