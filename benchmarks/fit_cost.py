"""Fit the step-time model to public GPU measurements, then hold out by source.

    python benchmarks/fit_cost.py [--out benchmarks/results/cost_fit.md] [--presets echo_sim/presets/fitted]

Data: benchmarks/data/profiling (Vidur, Splitwise, DistServe; SOURCES.md there). Model: the
roofline of echo_sim.cost.roofline with fitted rates (echo_sim.cost.fitted), evaluated through
the simulator's own code. Two stages:

1. Per device, Vidur's operator timings (the only per-GEMM data; A100 Llama-3-8B, H100
   Llama-2-7B, TP 1-8): the achieved-bandwidth curve (vs weight bytes), the achieved-FLOP curve
   (vs GEMM FLOPs) and the GEMM floor, by least squares on log time; the element-wise ops' per-layer
   time and bandwidth fraction, by a line through their sum.
2. Whole steps (Splitwise, DistServe's two engines), on log time: the attention FLOP and bandwidth
   fractions (shared: the GPU's attention kernels), and per serving engine (six numbers each): its
   per-step and per-request host time (DistServe's own decode fits have the same a + c·bs form),
   eager per-layer host time, all-reduce latency (base + per log2 TP: each engine's own NCCL
   path) and its GEMM efficiency in whole steps relative to Vidur's isolated GEMMs (a factor on the
   FLOP curve: at equal shapes DistServe's C++ engine prefills ~1.5x faster than its vLLM rows,
   so compute-bound time is not the GPU's alone).

Hold-out: for each whole-step source, stage 2 is fitted on the other two (stage 1 always uses
Vidur, which has no whole steps), and the held-out source is predicted (a) with the mean of the
training engines' numbers (nothing from the held-out source) and (b) with its own six engine
numbers fitted on it (the shared GPU parameters from the other sources). The roofline preset model (what the simulator charged
before) is scored on the same rows. The shipped presets (echo_sim/presets/fitted) are the fit on
all sources: a100 and h100 from their own Vidur curves, h200 = the h100 curves on the h200
preset's ceilings; the engine numbers (eager, all-reduce, GEMM efficiency) are DistServe's own engine's.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import markdown  # noqa: E402
from profiling_data import (LINEAR_OPS, NETWORKS, WHOLE_STEP_SOURCES, bare_model, fits_in_memory, predict_whole_steps,  # noqa: E402
                            vidur_rows, whole_step_rows)

from echo_sim.cost.fitted import FittedRates, write_fitted_profile  # noqa: E402
from echo_sim.cost.presets import load_hardware  # noqa: E402
from echo_sim.cost.roofline import NetworkCost, RooflineTerms  # noqa: E402

BANDWIDTH_KNOTS = (22.0, 24.0, 26.0, 28.0)        # log2 weight bytes: 4 MB (TP-8 o_proj) .. 256 MB
FLOPS_KNOTS = (30.0, 33.0, 36.0, 39.0, 42.0)     # log2 GEMM FLOPs: 1 GFLOP .. 4 TFLOP
FRACTION_BOUNDS = (0.05, 1.12)  # at most the datasheet: the presets are datasheet x 0.896 (A100, H100)
US = 1e-6


def _rates(**values) -> FittedRates:
    """FittedRates with neutral defaults for whatever a stage does not fit."""
    base = dict(bandwidth_log2_bytes=BANDWIDTH_KNOTS, bandwidth_fraction=(1.0,) * len(BANDWIDTH_KNOTS),
                flops_log2=FLOPS_KNOTS, flops_fraction=(1.0,) * len(FLOPS_KNOTS), gemm_floor_s=0.0,
                elementwise_layer_s=0.0, elementwise_fraction=1.0, attention_flops_fraction=1.0,
                attention_bandwidth_fraction=1.0, allreduce_base_s=0.0, allreduce_per_log2_tp_s=0.0,
                eager_layer_s=0.0)
    return FittedRates(**{**base, **values})


# ---------------------------------------------------------------- stage 1: Vidur (per device)

def fit_gemm_curves(vidur: pd.DataFrame, device: str) -> dict:
    """Bandwidth and FLOP fraction curves and the GEMM floor from one device's linears."""
    hw = load_hardware(device)
    part = vidur[(vidur.device == device) & vidur.op.isin(LINEAR_OPS)]
    model = part.model.iloc[0]
    cases = []
    for tp, rows in part.groupby("tp"):
        table = rows.pivot(index="tokens", columns="op", values="measured_s")[list(LINEAR_OPS)]
        cases.append((int(tp), table.index.to_numpy(float), np.log(table.to_numpy())))
    # Knots inside the measured range only: beyond it the curves stay flat at the last fitted value.
    shapes = [NetworkCost(NETWORKS[model], hw, tp, 2) for tp, _, _ in cases]
    weights = np.log2(np.concatenate([n.linear_params * 2 for n in shapes]))
    flops = np.log2(np.concatenate([2 * n.linear_params * tokens.max() for n, (_, tokens, _) in zip(shapes, cases)]))
    bandwidth_knots = tuple(k for k in BANDWIDTH_KNOTS if weights.min() - 1 <= k <= weights.max() + 1)
    flops_knots = tuple(k for k in FLOPS_KNOTS if k <= flops.max())
    nb = len(bandwidth_knots)

    def unpack(x):
        return dict(bandwidth_log2_bytes=bandwidth_knots, bandwidth_fraction=tuple(np.exp(x[:nb])),
                    flops_log2=flops_knots, flops_fraction=tuple(np.exp(x[nb:-1])), gemm_floor_s=float(x[-1]) * US)

    def residuals(x):
        rates = _rates(**unpack(x))
        out = [np.log(NetworkCost(NETWORKS[model], hw, tp, 2, rates).linear_ops(tokens)) - measured
               for tp, tokens, measured in cases]
        return np.concatenate([r.ravel() for r in out])

    lo, hi = np.log(FRACTION_BOUNDS)
    x0 = np.r_[np.full(nb, np.log(0.8)), np.full(len(flops_knots), np.log(0.8)), 2.0]
    bounds = (np.r_[np.full(len(x0) - 1, lo), 0.0], np.r_[np.full(len(x0) - 1, hi), 30.0])
    return unpack(least_squares(residuals, x0, bounds=bounds, x_scale="jac").x)


def fit_elementwise(vidur: pd.DataFrame, device: str) -> dict:
    """Per-layer element-wise time = a + tokens · bytes_per_token / (B · fraction), relative least squares."""
    hw = load_hardware(device)
    part = vidur[(vidur.device == device) & (vidur.op == "elementwise")]
    model = part.model.iloc[0]
    per_token_bytes = np.array([NetworkCost(NETWORKS[model], hw, int(tp), 2).elementwise_bytes_per_token
                                for tp in part.tp])
    design = np.c_[np.ones(len(part)), part.tokens.to_numpy(float) * per_token_bytes / hw.memory_bytes_per_s]
    weights = 1.0 / part.measured_s.to_numpy()
    (a, inverse_fraction), *_ = np.linalg.lstsq(design * weights[:, None], np.ones(len(part)), rcond=None)
    return dict(elementwise_layer_s=max(float(a), 0.0), elementwise_fraction=float(1.0 / max(inverse_fraction, 1e-3)))


def fit_stage1(vidur: pd.DataFrame) -> dict[str, dict]:
    return {device: {**fit_gemm_curves(vidur, device), **fit_elementwise(vidur, device)}
            for device in sorted(vidur.device.unique())}


# ---------------------------------------------------------------- stage 2: whole steps

# Shared by every engine (the GPU and its libraries) vs each serving engine's own host overhead.
SHARED = ("attention_flops_fraction", "attention_bandwidth_fraction")
# Per step, per request, per layer (eager host time), per all-reduce (base + per log2 TP), and the
# engine's GEMM efficiency in whole steps: the all-reduce is the engine's own (NCCL through Ray
# workers, NCCL from C++, custom kernels) and so are its kernels and host loop, so none is shared.
ENGINE = ("step_s", "request_s", "eager_layer_s", "allreduce_base_s", "allreduce_per_log2_tp_s", "gemm_flops_scale")
IN_RATES = ("eager_layer_s", "allreduce_base_s", "allreduce_per_log2_tp_s")  # the rest is applied below
ATTENTION_BOUNDS = (0.2, 1.3)  # FlashAttention-class kernels: 20-100+ % of the tensor-core ceiling


def terms_factory(rates_by_device: dict[str, FittedRates] | None):
    def terms_for(device: str, model: str, tp: int) -> RooflineTerms:
        rates = None if rates_by_device is None else rates_by_device[device]
        return RooflineTerms(load_hardware(device), bare_model(NETWORKS[model]), tp, rates)
    return terms_for


def rates_for(stage1: dict[str, dict], shared: dict, engine: dict) -> dict[str, FittedRates]:
    """Per device: Vidur curves (the FLOP curve times the engine's GEMM efficiency, at most the
    datasheet) + shared whole-step parameters + one engine's host overheads."""
    own = {k: engine[k] for k in IN_RATES}
    out = {}
    for device, values in stage1.items():
        flops = tuple(min(f * engine["gemm_flops_scale"], FRACTION_BOUNDS[1]) for f in values["flops_fraction"])
        out[device] = _rates(**{**values, "flops_fraction": flops}, **shared, **own)
    return out


def fitted_steps(rows: pd.DataFrame, stage1: dict[str, dict], shared: dict, engines: dict[str, dict]) -> np.ndarray:
    """Seconds per whole-step row through the simulator's roofline with fitted rates: forward +
    eager launches (these engines ran eagerly) + the engine's per-step and per-request host time."""
    out = np.zeros(len(rows))
    for source, index in rows.groupby("source").groups.items():
        engine = engines[source]
        parts = predict_whole_steps(rows.loc[index], terms_factory(rates_for(stage1, shared, engine)))
        out[rows.index.get_indexer(index)] = (parts.forward_s + parts.eager_launch_s).to_numpy() + engine["step_s"] \
            + engine["request_s"] * rows.loc[index].bs.to_numpy()
    return out


ENGINE_SCALE = (1e-3, US, US, US, US, 1.0)   # fitted in ms, us, us, us, us, 1
ENGINE_LOWER = (0.0, 0.0, 0.0, 0.0, 0.0, 0.3)
ENGINE_UPPER = (50.0, 2000.0, 2000.0, 2000.0, 2000.0, 1.5)
ENGINE_START = (1.0, 20.0, 50.0, 20.0, 5.0, 0.8)


def _engine(x) -> dict:
    return {k: float(v) * scale for k, v, scale in zip(ENGINE, x, ENGINE_SCALE)}


def fit_stage2(rows: pd.DataFrame, stage1: dict[str, dict]) -> tuple[dict, dict[str, dict]]:
    """(shared parameters, per-source engine overheads) on log time of the given whole-step rows."""
    sources = sorted(rows.source.unique())
    measured = np.log(rows.measured_s.to_numpy())
    n = len(ENGINE)

    def unpack(x):
        shared = dict(attention_flops_fraction=float(np.exp(x[0])), attention_bandwidth_fraction=float(np.exp(x[1])))
        return shared, {s: _engine(x[2 + n * i: 2 + n * (i + 1)]) for i, s in enumerate(sources)}

    def residuals(x):
        shared, engines = unpack(x)
        return np.log(fitted_steps(rows, stage1, shared, engines)) - measured

    lo, hi = np.log(ATTENTION_BOUNDS)
    x0 = np.r_[np.log(0.6), np.log(0.7), np.tile(ENGINE_START, len(sources))]
    bounds = (np.r_[lo, lo, np.tile(ENGINE_LOWER, len(sources))], np.r_[hi, hi, np.tile(ENGINE_UPPER, len(sources))])
    return unpack(least_squares(residuals, x0, bounds=bounds, x_scale="jac").x)


def mean_engine(engines: dict[str, dict]) -> dict:
    return {k: float(np.mean([e[k] for e in engines.values()])) for k in ENGINE}


def fit_engine_only(rows: pd.DataFrame, stage1: dict[str, dict], shared: dict) -> dict:
    """One source's own engine numbers (ENGINE) with everything else frozen."""
    source = rows.source.iloc[0]
    measured = np.log(rows.measured_s.to_numpy())
    fit = least_squares(lambda x: np.log(fitted_steps(rows, stage1, shared, {source: _engine(x)})) - measured,
                        ENGINE_START, bounds=(ENGINE_LOWER, ENGINE_UPPER), x_scale="jac")
    return _engine(fit.x)


# ---------------------------------------------------------------- evaluation

def roofline_steps(rows: pd.DataFrame) -> pd.DataFrame:
    """What the simulator charged before (roofline presets): prefill eager, decode graph or eager, + scheduler."""
    parts = predict_whole_steps(rows, terms_factory(None))
    scheduler = np.array([load_hardware(d).scheduler_step_s for d in rows.device]) + \
        np.array([load_hardware(d).scheduler_per_request_s for d in rows.device]) * rows.bs.to_numpy()
    prefill = (rows.op == "prefill").to_numpy()
    graph = parts.forward_s + np.where(prefill, parts.eager_launch_s, parts.graph_launch_s) + scheduler
    eager = parts.forward_s + parts.eager_launch_s + scheduler
    return pd.DataFrame({"roofline_graph_s": graph, "roofline_eager_s": eager}, index=rows.index)


def held_out(rows: pd.DataFrame, stage1: dict[str, dict]) -> tuple[pd.DataFrame, list[dict]]:
    """Predictions for each source from a fit on the other sources; the fold parameters."""
    frames, folds = [], []
    for source in WHOLE_STEP_SOURCES:
        train, test = rows[rows.source != source], rows[rows.source == source]
        shared, engines = fit_stage2(train, stage1)
        transferred, own = mean_engine(engines), fit_engine_only(test, stage1, shared)
        frames.append(test.assign(
            fitted_transfer_s=fitted_steps(test, stage1, shared, {source: transferred}),
            fitted_own_engine_s=fitted_steps(test, stage1, shared, {source: own})))
        folds.append(dict(held_out=source, trained_on=", ".join(sorted(train.source.unique())), **shared,
                          **{f"{k} [{s}]": v for s, e in engines.items() for k, v in e.items()},
                          **{f"{k} [held-out own fit]": v for k, v in own.items()}))
    return pd.concat(frames), folds


PREDICTIONS = {"roofline (graph)": "roofline_graph_s", "roofline (eager)": "roofline_eager_s",
               "fitted, engine = training mean": "fitted_transfer_s",
               "fitted, engine fitted on held-out": "fitted_own_engine_s"}


def error_table(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    rows = []
    for key, group in frame.groupby(by):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)), n=len(group))
        for label, column in PREDICTIONS.items():
            err = group[column] / group.measured_s - 1
            row[f"{label}: median |err|"] = float(np.median(np.abs(err)))
            row[f"{label}: p90 |err|"] = float(np.quantile(np.abs(err), 0.9))
        rows.append(row)
    return pd.DataFrame(rows)


def vidur_table(vidur: pd.DataFrame, stage1: dict[str, dict]) -> pd.DataFrame:
    """In-sample error of the Vidur fit (linears and element-wise) vs the roofline's linears."""
    out = []
    for (device, tp), part in vidur.groupby(["device", "tp"]):
        hw, net = load_hardware(device), NETWORKS[part.model.iloc[0]]
        fitted = NetworkCost(net, hw, int(tp), 2, _rates(**stage1[device]))
        plain = NetworkCost(net, hw, int(tp), 2)
        linear = part[part.op.isin(LINEAR_OPS)]
        tokens = linear.tokens.to_numpy(float)
        column = linear.op.map({op: i for i, op in enumerate(LINEAR_OPS)}).to_numpy()
        ours_fit = fitted.linear_ops(tokens)[np.arange(len(linear)), column]
        ours_roof = plain.linear_ops(tokens)[np.arange(len(linear)), column] + hw.kernel_floor_s
        elementwise = part[part.op == "elementwise"]
        ew = (stage1[device]["elementwise_layer_s"] + elementwise.tokens * fitted.elementwise_bytes_per_token
              / (hw.memory_bytes_per_s * stage1[device]["elementwise_fraction"]))
        out.append({"device": device, "tp": int(tp), "n linears": len(linear),
                    "linears roofline: median |err|": float(np.median(np.abs(ours_roof / linear.measured_s - 1))),
                    "linears fitted: median |err|": float(np.median(np.abs(ours_fit / linear.measured_s - 1))),
                    "linears fitted: p90 |err|": float(np.quantile(np.abs(ours_fit / linear.measured_s - 1), 0.9)),
                    "element-wise fitted: median |err|": float(np.median(np.abs(ew / elementwise.measured_s - 1)))})
    return pd.DataFrame(out)


# ---------------------------------------------------------------- presets

DERIVED = {
    "matmul_flops_per_s, memory_bytes_per_s": "the hardware preset's ceilings (echo_sim/presets/hardware); the curves are fractions of them",
    "graph_launch_s, kernel_floor_s (LM head, embedding, argmax)": "the hardware preset's estimates: every engine in the data ran eagerly",
    "scheduler_step_s, scheduler_per_request_s": "the hardware preset's estimates for the simulated engine (SGLang): each measured engine has its own per-step and per-request host time (fit_cost.md, measured_engines), none is SGLang",
    "link_bytes_per_s": "the hardware preset's (datasheet); only the all-reduce latency is fitted",
}


PRESET_ENGINE = "distserve:distserve"


def write_presets(folder: Path, stage1: dict[str, dict], shared: dict, engines: dict[str, dict], command: str) -> None:
    """a100/h100 from their own Vidur curves, h200 = the h100 curves; attention fractions from all
    whole-step sources; the engine-level numbers (eager per-layer host time, all-reduce latency) from
    DistServe's own engine, the one with the least host overhead in the data (C++, NCCL)."""
    engine = engines[PRESET_ENGINE]
    for device, source_device in (("a100", "a100"), ("h100", "h100"), ("h200", "h100")):
        derived = dict(DERIVED)
        derived["eager_layer_s, allreduce_base_s, allreduce_per_log2_tp_s, the flops_fraction factor"] = (
            f"fitted for the {PRESET_ENGINE} engine (C++, the least host overhead among the measured engines; "
            "the others' are under measured_engines): a choice, since SGLang is not in the data")
        if device != source_device:
            derived["bandwidth_fraction, flops_fraction, gemm_floor_s, elementwise_*"] = (
                "the h100 fit (Vidur H100 Llama-2-7B) applied to the h200 ceilings (780 TFLOP/s, 4.3 TB/s "
                "measured on this project's H200); no H200 data")
        write_fitted_profile(
            folder / f"{device}.json", device, rates_for(stage1, shared, engine)[source_device],
            fitted=[f"{n} (Vidur {source_device.upper()} linears / element-wise ops)" for n in
                    ("bandwidth_fraction", "flops_fraction", "gemm_floor_s", "elementwise_layer_s", "elementwise_fraction")]
            + [f"{n} (whole steps: Splitwise A100/H100, DistServe A100 x 2 engines)" for n in SHARED]
            + [f"{n} (whole steps of {PRESET_ENGINE})" for n in IN_RATES]
            + [f"flops_fraction x {engine['gemm_flops_scale']:.3f}: {PRESET_ENGINE}'s GEMM efficiency in whole steps"],
            derived=derived, command=command, extra={"engine": PRESET_ENGINE, "measured_engines": engines})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cost_fit.md"))
    parser.add_argument("--presets", type=Path, default=Path("echo_sim/presets/fitted"),
                        help="folder for the fitted profiles (a100, h100, h200)")
    args = parser.parse_args(argv)
    command = "python benchmarks/fit_cost.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    vidur, rows = vidur_rows(), whole_step_rows()
    rows = rows[fits_in_memory(rows)].reset_index(drop=True)
    stage1 = fit_stage1(vidur)
    print("stage 1 (Vidur) done", file=sys.stderr)
    predictions, folds = held_out(rows, stage1)
    predictions = predictions.join(roofline_steps(predictions))
    print("hold-out folds done", file=sys.stderr)
    shared, engines = fit_stage2(rows, stage1)
    write_presets(args.presets, stage1, shared, engines, command)
    text = report(predictions, folds, vidur_table(vidur, stage1), stage1, shared, engines, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".tmp").write_text(text)
    args.out.with_suffix(".tmp").replace(args.out)
    predictions.to_csv(args.out.with_suffix(".csv"), index=False, float_format="%.6g")
    print(text)
    return 0


def headline(predictions: pd.DataFrame) -> list[str]:
    lines = []
    for op in ("prefill", "decode"):
        part = predictions[predictions.op == op]
        cells = []
        for label, column in PREDICTIONS.items():
            err = np.abs(part[column] / part.measured_s - 1)
            cells.append(f"{label} {np.median(err):.1%} (p90 {np.quantile(err, 0.9):.1%})")
        lines.append(f"- held-out **{op}** whole steps, median |err|: " + "; ".join(cells))
    return lines


def report(predictions, folds, vidur_fit, stage1, shared, engines, command) -> str:
    params = pd.DataFrame([{"device": d, **{k: (", ".join(f"{x:.3f}" for x in v) if isinstance(v, tuple) else v)
                                             for k, v in values.items()}} for d, values in stage1.items()])
    return "\n".join([
        "# Step-time model fitted to public GPU measurements, held out by source", "",
        f"Command: `{command}`  ", f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  ",
        "Data: `benchmarks/data/profiling/` (Vidur, Splitwise, DistServe; SOURCES.md there). "
        "Module docstring of `benchmarks/fit_cost.py`: model and procedure.", "",
        "Error = predicted / measured − 1 over whole steps of the held-out source. Columns: the roofline "
        "presets as the simulator charged them before (decode with one graph replay, or eager; prefill eager; "
        "+ the presets' scheduler overhead); the fitted model with the held-out engine's numbers "
        "taken as the training engines' mean (nothing from the held-out source), or fitted on the held-out "
        "source alone (its six engine numbers: per-step, per-request, eager per-layer, all-reduce base and per "
        "log2 TP, GEMM efficiency; the shared GPU parameters from the other sources). "
        "DistServe rows are DistServe's own fitted curves, not raw measurements; Splitwise is the only H100 "
        "whole-step source, so holding it out tests A100-fitted whole-step parameters on H100.", "",
        "## Headline", "", *headline(predictions), "",
        "## Held-out whole steps by source, phase and TP", "",
        markdown(error_table(predictions, ["source", "op", "tp"]), "{:.3g}"), "",
        "## Held-out whole steps by phase and TP (all sources)", "",
        markdown(error_table(predictions, ["op", "tp"]), "{:.3g}"), "",
        "## Held-out whole steps by source and phase", "",
        markdown(error_table(predictions, ["source", "op"]), "{:.3g}"), "",
        "## What each fold fits", "",
        "Vidur has single operators only (no whole steps): it fits the GEMM curves and element-wise terms "
        "in every fold and is never held out as a whole-step source. DistServe is A100 only. Each fold fits "
        "the shared whole-step parameters and six engine numbers per training engine:", "",
        markdown(pd.DataFrame(folds), "{:.3g}"), "",
        "## Stage 1 (Vidur): fitted curves per device", "",
        "Knots: log2 weight bytes (bandwidth) and log2 GEMM FLOPs (FLOP rate), those inside each device's "
        "measured range (flat beyond it); values: fractions of the hardware preset's ceilings.", "",
        markdown(params, "{:.3g}"), "",
        "In-sample error on Vidur's operators (roofline = the preset roofline + one kernel floor):", "",
        markdown(vidur_fit, "{:.3g}"), "",
        "## Fit on all sources (the shipped presets, echo_sim/presets/fitted/)", "",
        markdown(pd.DataFrame([shared]), "{:.3g}"), "",
        markdown(pd.DataFrame([{"engine": s, **e} for s, e in engines.items()]), "{:.3g}"), "",
    ])


if __name__ == "__main__":
    sys.exit(main())
