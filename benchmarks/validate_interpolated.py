"""How much of `echo-run validate`'s error is the calibrated fit's form? (analysis, not a test)

`echo-run validate` writes, per policy × concurrency, the live run's step table with the measured
laps and the cost model's predicted components for the same step shapes. The simulator reproduces
the live run's steps exactly (same MAT, same step count), so its throughput error is the step-time
model's error on those shapes. This script re-prices the same steps with a model that keeps the
calibration's measurements instead of its additive fit: verify (and prefill, target part) time by
piecewise-linear interpolation over the measured verified-token counts V (mean over the grid's
batch sizes and KV lengths at each V), draft from the calibration's draft fit, charged for the
prefill only when the policy drafts, overhead as measured by calibrate.

    python benchmarks/validate_interpolated.py [benchmarks/results/validate_cpu] [calibration.json]

Prints one line per row: measured seconds, the calibrated fit's error and the interpolation's.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd


def interp(x: float, grid: np.ndarray, values: np.ndarray) -> float:
    """Piecewise linear inside the grid, continued linearly past either end (np.interp would clamp)."""
    if x > grid[-1]:
        return float(values[-1] + (x - grid[-1]) * (values[-1] - values[-2]) / (grid[-1] - grid[-2]))
    return float(np.interp(x, grid, values))


def verify_table(calibration: dict) -> tuple[np.ndarray, np.ndarray]:
    """Measured verify seconds by V (mean over the points with that V). Shape: [distinct V] x2."""
    points = pd.DataFrame(calibration["points"])
    by_v = points.groupby("verify_tokens")["verify_s"].mean()
    return by_v.index.to_numpy(dtype=float), by_v.to_numpy(dtype=float)


def interpolated_seconds(steps: pd.DataFrame, calibration: dict) -> float:
    v_grid, seconds = verify_table(calibration)
    draft = calibration["fit"]["draft"]
    overhead = calibration["overhead"]
    drafts = bool((steps["draft_depth"] > 0).any())
    total = 0.0
    for step in steps.itertuples():
        if step.prefill_tokens:
            total += interp(step.prefill_tokens, v_grid, seconds)
            if drafts:
                total += draft["per_level_s"] + draft["per_token_s"] * step.prefill_tokens
        if step.batch_size:
            total += interp(step.verify_tokens, v_grid, seconds)
            total += overhead["step_s"] + overhead["per_request_s"] * step.batch_size
            total += step.predicted_draft
    return total


def main(argv: list[str]) -> int:
    folder = Path(argv[0]) if argv else Path("benchmarks/results/validate_cpu")
    summary = json.loads((folder / "validation.json").read_text()) if (folder / "validation.json").is_file() else {}
    calibration_path = Path(argv[1]) if len(argv) > 1 else Path(summary.get(
        "calibration", "traces/calibration/cpu-2core_qwen2.5-coder-1.5b.json"))
    calibration = json.loads(calibration_path.read_text())
    print(f"{'row':<14} {'measured s':>10} {'fit err %':>9} {'interp err %':>12}")
    for path in sorted((folder / "rows").glob("*.steps.csv")):
        steps = pd.read_csv(path)
        measured = float(steps[["prefill_s", "draft_s", "select_s", "verify_s", "commit_s"]].sum().sum())
        fitted = float(steps[[c for c in steps.columns if c.startswith("predicted_")]].sum().sum())
        interpolated = interpolated_seconds(steps, calibration)
        print(f"{path.name.split('.')[0]:<14} {measured:>10.1f} {100 * (fitted / measured - 1):>+9.1f} "
              f"{100 * (interpolated / measured - 1):>+12.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
