"""What the notebooks plot, computed here: notebooks/*.ipynb only load these tables and draw them.

Each table is a set of `echo_sim.cli.sweep` grid points, run resumably (one JSON per finished point in a
work folder, so an interrupted run keeps its work) and cached as a small Parquet table plus a JSON
manifest naming the grid that produced it, under

    <results root>/<trace stem>-<trace sha256[:12]>/<table>.parquet

so re-executing a notebook is cheap, and a different trace (or grid) never reuses old numbers.

Environment, read by `notebook_settings()` (the notebooks and tests/test_notebooks.py set it):
    ECHO_NOTEBOOK_QUICK=1      reduced grid for the test suite (QUICK_GRID)
    ECHO_NOTEBOOK_TRACE=PATH   acceptance trace (default: the shipped traces/mt_bench*.trace.npz)
    ECHO_NOTEBOOK_RESULTS=DIR  results root (default notebooks/results, quick: notebooks/results/quick)
    ECHO_NOTEBOOK_JOBS=N       worker processes (default: the CPU count; quick: 1)
    ECHO_NOTEBOOK_REFRESH=1    recompute cached tables and their points (after a simulator change)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from echo_sim.atomic import write_bytes_atomic, write_text_atomic
from echo_sim.config import SimConfig
from echo_sim.paths import REPO_ROOT
from echo_sim.policies.registry import POLICY_NAMES
from echo_sim.cli.sweep import DEFAULT_CONCURRENCY, GridPoint, run_grid, tidy

NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
ENV_QUICK, ENV_TRACE, ENV_RESULTS = "ECHO_NOTEBOOK_QUICK", "ECHO_NOTEBOOK_TRACE", "ECHO_NOTEBOOK_RESULTS"
ENV_JOBS, ENV_REFRESH = "ECHO_NOTEBOOK_JOBS", "ECHO_NOTEBOOK_REFRESH"
# The two settings of the ECHO paper's throughput figure: a dense 8B target on one GPU and a
# 235B MoE target on eight (the preset's tensor_parallel).
COST_SETTINGS = (("h200", "llama-3.1-8b"), ("h200", "qwen3-235b-a22b"))
# echo and each of its parts switched off (POLICIES.md "Ablations are first-class").
ABLATIONS = {
    "echo": "full echo",
    "echo:gate=off": "gate off",
    "echo:calibration=off": "calibration off",
    "echo:budget=fixed": "fixed budget B = bs·(N−1)",
    "echo:bucketing=off": "bucketing off",
    "echo:shape=off": "shape adaptation off",
}
MAX_BUDGET_STEPS = 1500  # steady-state steps kept per load for the B-vs-batch-size scatter
MAX_EXTENT_STEPS = 300  # steady-state steps kept per load for the per-request depth/width pictures


@dataclass(frozen=True)
class Grid:
    """Loads and sizes of one notebook run (the full one, or the test suite's reduced one)."""

    concurrency: tuple[int, ...]
    ablation_loads: tuple[int, ...]  # low, medium, high
    anatomy_loads: tuple[int, ...]  # low, high
    requests: int


FULL_GRID = Grid(tuple(DEFAULT_CONCURRENCY), (1, 16, 256), (4, 256), SimConfig.requests)
QUICK_GRID = Grid((1, 4, 16), (1, 4, 16), (2, 16), 24)


@dataclass(frozen=True)
class NotebookSettings:
    trace: str | None  # None: the shipped trace (kept out of the point keys, so they are portable)
    trace_file: Path
    trace_sha256: str
    results: Path  # this trace's folder of cached tables
    figures: Path  # where exported figures go (notebooks/figures only for the full grid)
    grid: Grid
    quick: bool
    jobs: int
    refresh: bool

    @property
    def description(self) -> str:
        mode = "REDUCED test grid" if self.quick else "full grid"
        return (f"{mode}: concurrency {', '.join(map(str, self.grid.concurrency))}; "
                f"{self.grid.requests} requests per point; trace {self.trace_file.name} "
                f"(sha256 {self.trace_sha256[:12]}); tables in {_shown(self.results)}")


def _shown(path: Path) -> str:
    """The path relative to the repository when inside it (saved outputs stay machine-independent)."""
    return str(path.relative_to(REPO_ROOT)) if path.is_relative_to(REPO_ROOT) else str(path)


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def notebook_settings() -> NotebookSettings:
    """Settings from the environment (module docstring); raises SimConfigError when there is no trace."""
    quick = _flag(ENV_QUICK)
    trace = os.environ.get(ENV_TRACE) or None
    trace_file = SimConfig(trace=trace).trace_path()  # names the missing file, or the missing shipped trace
    sha = file_sha256(trace_file)
    default_root = NOTEBOOKS_DIR / "results" / ("quick" if quick else "")
    root = Path(os.environ.get(ENV_RESULTS) or default_root)
    results = root / f"{trace_file.name.split('.')[0]}-{sha[:12]}"
    jobs_text = os.environ.get(ENV_JOBS) or ("1" if quick else str(os.cpu_count() or 1))
    jobs = int(jobs_text)
    if jobs < 1:
        raise ValueError(f"{ENV_JOBS}={jobs_text}: must be >= 1")
    return NotebookSettings(
        trace=None if trace is None else str(Path(trace).resolve()), trace_file=trace_file,
        trace_sha256=sha, results=results, figures=(results / "figures") if quick else NOTEBOOKS_DIR / "figures",
        grid=QUICK_GRID if quick else FULL_GRID, quick=quick, jobs=jobs, refresh=_flag(ENV_REFRESH),
    )


# ------------------------------------------------------------------------------ cache and sweeps


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def cached_table(settings: NotebookSettings, name: str, spec: dict, compute: Callable[[], pd.DataFrame]) -> pd.DataFrame:
    """The table `name` for this grid `spec`: read from the cache when the manifest matches, else
    computed and written atomically (table first, manifest last: a half-written pair is recomputed)."""
    table_path = settings.results / f"{name}.parquet"
    manifest_path = settings.results / f"{name}.json"
    spec = json.loads(json.dumps({**spec, "trace_sha256": settings.trace_sha256}, default=str))
    if not settings.refresh and table_path.is_file() and manifest_path.is_file():
        if json.loads(manifest_path.read_text()).get("spec") == spec:
            return pd.read_parquet(table_path)
    table = compute()
    write_bytes_atomic(table_path, table.to_parquet(index=False))
    manifest = {"spec": spec, "rows": len(table), "trace": settings.trace_file.name, "git_commit": _git_commit()}
    write_text_atomic(manifest_path, json.dumps(manifest, indent=1) + "\n")
    return table


_REFRESHED: set[Path] = set()  # work folders this process has cleared for a refresh


def workdir(settings: NotebookSettings, hardware: str, model: str) -> Path:
    """One resumable sweep folder per cost setting: tables that share points (ar, echo) share them.
    A refresh clears it once per process: its points were computed by the simulator as it was (a
    point's key names its configuration, not the code), and a refresh is asked for after a change."""
    path = settings.results / "work" / f"{hardware}_{model}"
    if settings.refresh and path not in _REFRESHED:
        shutil.rmtree(path, ignore_errors=True)
        _REFRESHED.add(path)
    return path


def point_configs(settings: NotebookSettings, hardware: str, model: str, policies, loads,
                  step_log: bool = False) -> list[SimConfig]:
    return [SimConfig(policy=policy, concurrency=load, requests=settings.grid.requests, trace=settings.trace,
                      hardware=hardware, model=model, step_log=step_log)
            for load in loads for policy in policies]


def run_configs(settings: NotebookSettings, hardware: str, model: str, configs: list[SimConfig]):
    """(tidy table with speedup_vs_ar, records) of these points, each computed at most once."""
    for config in configs:
        config.validate()
    records = run_grid([GridPoint(c) for c in configs], workdir(settings, hardware, model), settings.jobs)
    return tidy(records), records


def _grid_spec(settings: NotebookSettings, **extra) -> dict:
    return {"requests": settings.grid.requests, "settings": COST_SETTINGS, "trace": settings.trace, **extra}


# ------------------------------------------------------------------------------ tables


def throughput_table(settings: NotebookSettings) -> pd.DataFrame:
    """One row per (cost setting, policy, concurrency): every policy of the registry, ar included."""
    loads = settings.grid.concurrency

    def compute() -> pd.DataFrame:
        parts = [run_configs(settings, hw, model, point_configs(settings, hw, model, POLICY_NAMES, loads))[0]
                 for hw, model in COST_SETTINGS]
        return pd.concat(parts, ignore_index=True)

    return cached_table(settings, "throughput", _grid_spec(settings, policies=POLICY_NAMES, loads=loads), compute)


def ablation_table(settings: NotebookSettings) -> pd.DataFrame:
    """echo and each ablation (plus ar for speedups) at the grid's three ablation loads; column
    `variant` holds the readable name of each ablation (ABLATIONS)."""
    loads = settings.grid.ablation_loads
    policies = ("ar", *ABLATIONS)

    def compute() -> pd.DataFrame:
        parts = [run_configs(settings, hw, model, point_configs(settings, hw, model, policies, loads))[0]
                 for hw, model in COST_SETTINGS]
        table = pd.concat(parts, ignore_index=True)
        table["variant"] = table["policy"].map(lambda p: ABLATIONS.get(p, p))
        return table

    return cached_table(settings, "ablations", _grid_spec(settings, policies=policies, loads=loads), compute)


def _echo_step_runs(settings: NotebookSettings, loads) -> list[tuple[str, str, dict, pd.DataFrame]]:
    """(hardware, model, metrics record, full step log) of echo with --step-log at these loads."""
    runs = []
    for hw, model in COST_SETTINGS:
        configs = point_configs(settings, hw, model, ("echo",), loads, step_log=True)
        _, records = run_configs(settings, hw, model, configs)
        for record in records:
            steps = pd.read_parquet(workdir(settings, hw, model) / "steps" / f"{record['key']}.parquet")
            runs.append((hw, model, record, steps))
    return runs


def steady_steps(record: dict, steps: pd.DataFrame, limit: int) -> pd.DataFrame:
    """Decode steps inside the run's steady-state window (all decode steps when it has none),
    thinned to at most `limit` evenly spaced steps (deterministic)."""
    decode = steps[steps["batch_size"] > 0]
    start, end = record.get("window_start_s"), record.get("window_end_s")
    if start is not None and end is not None and np.isfinite(start) and np.isfinite(end):
        decode = decode[(decode["end"] > start) & (decode["end"] <= end)]
    if len(decode) > limit:
        decode = decode.iloc[np.unique(np.linspace(0, len(decode) - 1, limit).round().astype(int))]
    return decode


def _tagged(frame: pd.DataFrame, hardware: str, model: str, record: dict) -> pd.DataFrame:
    """The frame with its setting in front (hardware, model, concurrency) and its acceptance source."""
    tags = pd.DataFrame({"hardware": hardware, "model": model, "concurrency": record["concurrency"]},
                        index=frame.index)
    return pd.concat([tags, frame], axis=1).assign(acceptance_source=record["acceptance_source"])


BUDGET_COLUMNS = ["step", "batch_size", "budget", "selected", "padding", "verify_tokens", "eager", "draft_depth",
                  "draft_width", "kv_tokens"]


def budget_table(settings: NotebookSettings) -> pd.DataFrame:
    """echo's steady-state steps at every load: batch size, chosen budget B, selected draft nodes,
    bucket padding, verified tokens V, eager flag and the drafted shape S′ × k′ (one row per kept step)."""
    loads = settings.grid.concurrency

    def compute() -> pd.DataFrame:
        parts = []
        for hw, model, record, steps in _echo_step_runs(settings, loads):
            kept = steady_steps(record, steps, MAX_BUDGET_STEPS)[BUDGET_COLUMNS]
            parts.append(_tagged(kept, hw, model, record))
        return pd.concat(parts, ignore_index=True)

    return cached_table(settings, "echo_budget", _grid_spec(settings, loads=loads, limit=MAX_BUDGET_STEPS), compute)


def extent_table(settings: NotebookSettings) -> pd.DataFrame:
    """Per request and steady-state step of echo at the low and high anatomy loads: the selected
    depth (deepest selected level) and width (most nodes selected on one level), and the accepted
    and oracle depths; one row per request-step, requests in batch order."""
    loads = settings.grid.anatomy_loads

    def compute() -> pd.DataFrame:
        parts = []
        for hw, model, record, steps in _echo_step_runs(settings, loads):
            kept = steady_steps(record, steps, MAX_EXTENT_STEPS)
            columns = ["requests", "selected_depth", "selected_width", "accepted_depth", "oracle_depth_r"]
            rows = kept[["step", "batch_size", *columns]].explode(columns, ignore_index=True)
            rows = rows.rename(columns={"requests": "request", "oracle_depth_r": "oracle_depth"})
            parts.append(_tagged(rows.astype({c: "int64" for c in rows.columns}), hw, model, record))
        return pd.concat(parts, ignore_index=True)

    return cached_table(settings, "echo_extents", _grid_spec(settings, loads=loads, limit=MAX_EXTENT_STEPS), compute)


def snapshot_step(extents: pd.DataFrame, hardware: str, model: str, concurrency: int) -> pd.DataFrame:
    """The requests of one representative steady-state step (the median kept step among those with
    the most requests), sorted by selected depth (deepest first), then width (narrowest first)."""
    rows = extents[(extents["hardware"] == hardware) & (extents["model"] == model)
                   & (extents["concurrency"] == concurrency)]
    if rows.empty:
        raise ValueError(f"no echo steps for {hardware}/{model} at concurrency {concurrency}")
    full = rows[rows["batch_size"] == rows["batch_size"].max()]
    steps = np.sort(full["step"].unique())
    chosen = rows[rows["step"] == steps[len(steps) // 2]]
    return chosen.sort_values(["selected_depth", "selected_width"], ascending=[False, True], kind="stable")


# ------------------------------------------------------------------------------ labels and summaries


def setting_titles() -> dict[tuple[str, str], str]:
    """(hardware, model) -> a panel title naming the simulated target and its parallelism."""
    from echo_sim.cost.presets import load_model

    titles = {}
    for hardware, model in COST_SETTINGS:
        spec = load_model(model)
        tp = spec.tensor_parallel
        gpus = "1 GPU" if tp == 1 else f"{tp} GPUs, TP {tp}"
        draft = spec.draft_kind.upper().replace("EAGLE3", "EAGLE-3")
        titles[(hardware, model)] = (f"{hardware.upper()} · {model} ({spec.dtype}, {gpus}) + {draft} draft: "
                                     "roofline step times")
    return titles


def trace_note(settings: NotebookSettings) -> str:
    """Which acceptance trace this run replays, said plainly when it is not the shipped one."""
    if settings.trace is None:
        return f"acceptance trace: the shipped {settings.trace_file.name}"
    return (f"NOTE: acceptance trace {settings.trace_file} is NOT the shipped MT-Bench trace "
            f"({ENV_TRACE} is set); the figures below replay it instead, and their titles name it.")


def acceptance_label(table: pd.DataFrame) -> str:
    """The acceptance source(s) of a table, e.g. 'mt_bench_qwen_coder.trace.npz (draft -> target)',
    model paths shortened to their file names so that a figure title stays readable."""
    sources = sorted(set(map(str, table["acceptance_source"].dropna())))
    return " + ".join(re.sub(r"[^\s()]*/([^\s/()]+)", r"\1", source) for source in sources)


def speedup_table(table: pd.DataFrame, hardware: str, model: str) -> pd.DataFrame:
    """Speedup over ar: policies (rows, registry order) × concurrency (columns)."""
    part = table[(table["hardware"] == hardware) & (table["model"] == model)]
    pivot = part.pivot_table(index="policy", columns="concurrency", values="speedup_vs_ar", aggfunc="mean")
    return pivot.reindex([p for p in POLICY_NAMES if p in pivot.index])


def best_policy_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per cost setting and concurrency: the fastest policy other than the oracle ceiling, its
    speedup over ar, echo's speedup and echo's gain over the best other non-oracle policy (%)."""
    rows = []
    real = table[~table["policy"].str.startswith("oracle")]
    for (hardware, model, load), part in real.groupby(["hardware", "model", "concurrency"]):
        speed = part.groupby("policy")["output_tokens_per_s"].mean()
        others = speed.drop(index="echo", errors="ignore")
        rows.append({"hardware": hardware, "model": model, "concurrency": load, "fastest": speed.idxmax(),
                     "fastest_speedup_vs_ar": speed.max() / speed["ar"],
                     "echo_speedup_vs_ar": speed.get("echo", np.nan) / speed["ar"],
                     "best_other": others.idxmax(),
                     "echo_gain_over_best_other_pct": 100 * (speed.get("echo", np.nan) / others.max() - 1)})
    return pd.DataFrame(rows)


def ablation_change(table: pd.DataFrame) -> pd.DataFrame:
    """Output tokens/s of each ablation relative to full echo (%), per cost setting and load."""
    rows = []
    for (hardware, model, load), part in table.groupby(["hardware", "model", "concurrency"]):
        speed = part.groupby("variant")["output_tokens_per_s"].mean()
        for variant in ABLATIONS.values():
            if variant != ABLATIONS["echo"]:
                rows.append({"hardware": hardware, "model": model, "concurrency": load, "variant": variant,
                             "change_vs_full_echo_pct": 100 * (speed[variant] / speed[ABLATIONS["echo"]] - 1)})
    return pd.DataFrame(rows).pivot_table(index=["hardware", "model", "variant"], columns="concurrency",
                                          values="change_vs_full_echo_pct", sort=False)
