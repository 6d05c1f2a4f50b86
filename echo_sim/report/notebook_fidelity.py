"""The fidelity notebook's tables: how far the simulator's numbers are from measured ones.

Three sources, all files the repository ships (nothing is simulated or invented here):
- the runtime's validation table (`echo-run validate`: the same workload simulated and served
  live), benchmarks/results/validate*/validation.json or benchmarks/results/validate*.json;
- calibration files (`echo-run calibrate`), traces/calibration/*.json: measured step times and the
  fitted cost model's prediction at every measured point (the fit's residuals);
- the roofline presets against published GPU step timings, benchmarks/results/cost_crosscheck.csv.
A missing source gives an empty result, which the notebook reports as missing. The files are read
under the repository root, or under ECHO_NOTEBOOK_FIDELITY_ROOT when set (the tests point it at
synthetic files to exercise every cell).
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path

import pandas as pd

from echo_sim.cost.calibration_fit import CalibrationPoint
from echo_sim.paths import REPO_ROOT

VALIDATION_GLOBS = ("benchmarks/results/validate*/validation.json", "benchmarks/results/validate*.json")
CALIBRATION_GLOB = "traces/calibration/*.json"
CROSSCHECK_CSV = "benchmarks/results/cost_crosscheck.csv"
VALIDATED_QUANTITIES = ("throughput", "mat", "tpot")  # echo_runtime.validate.COMPARED short names
STEP_COMPONENTS = ("prefill", "draft", "verify", "overhead")  # <part>_seconds_measured / _predicted
ENV_ROOT = "ECHO_NOTEBOOK_FIDELITY_ROOT"


def fidelity_root() -> Path:
    return Path(os.environ.get(ENV_ROOT) or REPO_ROOT)


def fidelity_root_label() -> str:
    root = fidelity_root()
    return "the repository root" if root.resolve() == REPO_ROOT.resolve() else str(root)


def validation_files(root: Path | None = None) -> list[Path]:
    root = root or fidelity_root()
    return sorted({path for pattern in VALIDATION_GLOBS for path in Path(root).glob(pattern) if path.is_file()})


def validation_table(root: Path | None = None) -> pd.DataFrame:
    """One row per (file, policy, concurrency, quantity): simulated, measured, error_pct, plus the
    file's setting (hardware, target, draft, calibration, trace). Empty when no table exists.
    Raises ValueError naming the file when one is malformed."""
    root, rows = root or fidelity_root(), []
    for path in validation_files(root):
        try:
            data = json.loads(path.read_text())
            setting = {key: data.get(key) for key in ("hardware", "target", "draft", "calibration", "trace")}
            for row in data["rows"]:
                for quantity in VALIDATED_QUANTITIES:
                    rows.append({"file": str(path.relative_to(root)), **setting, "policy": row["policy"],
                                 "concurrency": int(row["concurrency"]), "quantity": quantity,
                                 "simulated": float(row[f"{quantity}_simulated"]),
                                 "measured": float(row[f"{quantity}_measured"]),
                                 "error_pct": float(row[f"{quantity}_error_pct"]),
                                 "outputs_match_trace": bool(row.get("outputs_match_trace", False)),
                                 "step_time_model_error_pct": float(row.get("step_time_model_error_pct", "nan"))})
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a validation table ({type(error).__name__}: {error})") from None
    return pd.DataFrame(rows)


def validation_components(root: Path | None = None) -> pd.DataFrame:
    """Where the simulated time goes wrong: one row per (file, policy, concurrency, step-time
    component) with the seconds the live run measured and the calibrated cost model predicted for
    the same steps. Empty when no table has these columns (older validation tables)."""
    root, rows = root or fidelity_root(), []
    for path in validation_files(root):
        for row in json.loads(path.read_text()).get("rows", []):
            for part in STEP_COMPONENTS:
                measured, predicted = row.get(f"{part}_seconds_measured"), row.get(f"{part}_seconds_predicted")
                if measured is not None and predicted is not None:
                    rows.append({"file": str(path.relative_to(root)), "policy": row["policy"],
                                 "concurrency": int(row["concurrency"]), "component": part,
                                 "measured_s": float(measured), "predicted_s": float(predicted)})
    return pd.DataFrame(rows)


def calibration_residuals(root: Path | None = None) -> tuple[pd.DataFrame, list[str]]:
    """(one row per measured point of every calibration file, problems): the point's grid
    coordinates, measured verify/draft seconds, the fit's prediction and relative error
    (fit − measured) ÷ measured. Files that do not load are listed in `problems`, not skipped
    silently."""
    from echo_sim.cost.calibration_file import load_calibration

    rows, problems = [], []
    for path in sorted(Path(root or fidelity_root()).glob(CALIBRATION_GLOB)):
        try:
            calibration = load_calibration(path)
        except ValueError as error:  # CostModelError names the field
            problems.append(str(error))
            continue
        for point in calibration.points:
            verify_fit, draft_fit = calibration.fit.predict(point)
            row = {"file": path.name, "hardware": calibration.hardware, "model": calibration.model,
                   "draft_model": calibration.draft_model, "dtype": calibration.dtype,
                   **{f.name: getattr(point, f.name) for f in fields(CalibrationPoint)}}
            row["verify_fit_s"] = verify_fit
            row["verify_rel_err"] = (verify_fit - point.verify_s) / point.verify_s
            timed_draft = point.draft_depth > 0 and point.draft_s is not None and draft_fit is not None
            row["draft_fit_s"] = draft_fit if timed_draft else None
            row["draft_rel_err"] = (draft_fit - point.draft_s) / point.draft_s if timed_draft else None
            rows.append(row)
    return pd.DataFrame(rows), problems


def cost_crosscheck(root: Path | None = None) -> pd.DataFrame:
    """benchmarks/results/cost_crosscheck.csv with `graph_error` and `eager_error` (= ours ÷
    measured − 1) for whole prefill/decode steps; empty when the file is absent."""
    path = Path(root or fidelity_root()) / CROSSCHECK_CSV
    if not path.is_file():
        return pd.DataFrame()
    table = pd.read_csv(path)
    missing = {"op", "measured_s", "graph_s", "eager_s"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing columns {', '.join(sorted(missing))}")
    steps = table[table["op"].isin(["prefill", "decode"]) & (table["measured_s"] > 0)].copy()
    steps["graph_error"] = steps["graph_s"] / steps["measured_s"] - 1
    steps["eager_error"] = steps["eager_s"] / steps["measured_s"] - 1
    return steps.reset_index(drop=True)


def validation_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per file and policy, over its concurrencies: mean and largest |error| (%) of each validated
    quantity, the mean step-time model error (%) and whether every live output equalled the
    trace's greedy tokens."""
    rows = []
    for (file, policy), part in table.groupby(["file", "policy"], sort=False):
        row = {"file": file, "policy": policy, "points": part["concurrency"].nunique()}
        for quantity in VALIDATED_QUANTITIES:
            errors = part.loc[part["quantity"] == quantity, "error_pct"]
            row[f"{quantity}_mean_err_pct"] = errors.mean()
            row[f"{quantity}_max_abs_err_pct"] = errors.abs().max()
        row["step_time_model_mean_err_pct"] = part.drop_duplicates("concurrency")["step_time_model_error_pct"].mean()
        row["outputs_match_trace"] = bool(part["outputs_match_trace"].all())
        rows.append(row)
    return pd.DataFrame(rows).set_index(["file", "policy"])


def _rms(values: pd.Series) -> float:
    values = values.dropna().astype(float)
    return float((values ** 2).mean() ** 0.5) if len(values) else float("nan")


def residual_summary(residuals: pd.DataFrame) -> pd.DataFrame:
    """Per calibration file: points, RMS and largest |relative error| (%) of the verify and draft fits."""
    rows = []
    for file, part in residuals.groupby("file"):
        verify, draft = part["verify_rel_err"].astype(float), part["draft_rel_err"].dropna().astype(float)
        rows.append({"file": file, "hardware": part["hardware"].iloc[0], "model": part["model"].iloc[0],
                     "points": len(part), "verify_rms_err_pct": 100 * _rms(verify),
                     "verify_max_abs_err_pct": 100 * verify.abs().max(), "draft_points": len(draft),
                     "draft_rms_err_pct": 100 * _rms(draft),
                     "draft_max_abs_err_pct": 100 * draft.abs().max() if len(draft) else float("nan")})
    return pd.DataFrame(rows).set_index("file")


def crosscheck_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per source, device and step kind: count and median error (%) charging graph replay or eager
    launches (negative: the roofline is too fast)."""
    grouped = table.groupby(["source", "device", "op"])
    return pd.DataFrame({"n": grouped.size(), "graph_median_err_pct": 100 * grouped["graph_error"].median(),
                         "eager_median_err_pct": 100 * grouped["eager_error"].median()})
