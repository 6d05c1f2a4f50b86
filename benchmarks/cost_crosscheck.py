"""Cross-check the roofline presets against measured GPU timings published by other simulators.

    python benchmarks/cost_crosscheck.py [--profiling benchmarks/data/profiling]
                                         [--out benchmarks/results/cost_crosscheck.md]

Data (benchmarks/data/profiling, copied from ../shared/data/profiling; SOURCES.md there has
provenance and licences; loaded by benchmarks/profiling_data.py):
  - Vidur (microsoft/vidur @ 7d475133, MIT): per-operator medians of the four dense linears of
    Llama-3-8B on A100 and Llama-2-7B on H100, TP 1/2/4/8, 1 to 32k tokens.
  - Splitwise (Mutinifni/splitwise-sim, MIT): whole-model prompt and per-token decode times of
    Llama-2-70B (A100/H100, TP 2/4/8) and BLOOM-176B (TP 8), mean of 5 repeats.
  - DistServe (LLMServe/DistServe, Apache-2.0): fitted prefill/decode times of OPT-13B/66B on
    A100-80G for two engines, evaluated on a grid (these are fits, not raw measurements).

Our side: the presets' roofline (echo_sim.cost.roofline) with the a100/h100 hardware files, the
models' architectures built here from their public configs. Error = ours / measured − 1.
"forward" compares the roofline forward alone; "graph"/"eager" add what the simulator also charges
(launches: eager for prefill; one graph replay or eager launches for decode; scheduler).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tables import markdown  # noqa: E402
from profiling_data import (DATA, LINEAR_OPS, NETWORKS, bare_model, predict_whole_steps,  # noqa: E402
                            vidur_rows as vidur_measurements, whole_step_rows)

from echo_sim.cost.presets import load_hardware  # noqa: E402
from echo_sim.cost.roofline import RooflineTerms  # noqa: E402


def roofline_terms(device: str, model: str, tp: int) -> RooflineTerms:
    return RooflineTerms(load_hardware(device), bare_model(NETWORKS[model]), tp)


def vidur_rows(root: Path) -> pd.DataFrame:
    """Vidur's linears with the roofline's time of each (as charged: the op plus its kernel floor)."""
    data = vidur_measurements(root)
    data = data[data.op.isin(LINEAR_OPS)].reset_index(drop=True)
    ours = np.zeros(len(data))
    for (device, model, tp), index in data.groupby(["device", "model", "tp"]).groups.items():
        part = data.loc[index]
        ops = roofline_terms(device, model, int(tp)).target.linear_ops(part.tokens.to_numpy(float))
        ours[data.index.get_indexer(index)] = ops[np.arange(len(part)), part.op.map(LINEAR_OPS.index).to_numpy()]
    floor = np.array([load_hardware(d).kernel_floor_s for d in data.device])
    return data.assign(forward_s=ours, graph_s=ours + floor, eager_s=ours + floor)


def whole_rows(root: Path) -> pd.DataFrame:
    """Splitwise and DistServe whole steps with the roofline forward, and the step with one graph
    replay (prefill: eager) or eager launches, + the presets' scheduler overhead."""
    data = whole_step_rows(root)
    parts = predict_whole_steps(data, roofline_terms)
    hw = [load_hardware(d) for d in data.device]
    scheduler = np.array([h.scheduler_step_s for h in hw]) + np.array([h.scheduler_per_request_s for h in hw]) * data.bs
    prefill = data.op == "prefill"
    return data.assign(forward_s=parts.forward_s,
                       graph_s=parts.forward_s + np.where(prefill, parts.eager_launch_s, parts.graph_launch_s) + scheduler,
                       eager_s=parts.forward_s + parts.eager_launch_s + scheduler)


def error_summary(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    def stats(group: pd.DataFrame) -> pd.Series:
        out = {"n": len(group)}
        for kind in ("forward", "graph", "eager"):
            err = group[f"{kind}_s"] / group.measured_s - 1
            out[f"{kind}: median err"] = np.median(err)
            out[f"{kind}: median |err|"] = np.median(np.abs(err))
            out[f"{kind}: p90 |err|"] = np.quantile(np.abs(err), 0.9)
        return pd.Series(out)
    summary = frame.groupby(by).apply(stats, include_groups=False).reset_index()
    return summary.astype({"n": int})


def vidur_regimes(frame: pd.DataFrame) -> pd.DataFrame:
    bins = pd.cut(frame.tokens, [0, 64, 512, 10 ** 6], labels=["1-64", "65-512", ">512"])
    return error_summary(frame.assign(tokens_range=bins.astype(str)), ["device", "model", "tp", "tokens_range"])


def achieved_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """Effective bandwidth (V=1) and FLOP rate (largest V) of the measured TP-1 linears."""
    rows = []
    for (device, model), part in frame[frame.tp == 1].groupby(["device", "model"]):
        params = roofline_terms(device, model, 1).target.linear_params.sum()
        per_token = part.groupby("tokens").measured_s.sum()
        biggest = per_token.index.max()
        hw = load_hardware(device)
        rows.append({"device": device, "model": model,
                     "measured GB/s at 1 token": 2 * params / per_token.loc[1] / 1e9,
                     "preset GB/s": hw.memory_bytes_per_s / 1e9,
                     f"measured TFLOP/s at max tokens": 2 * params * biggest / per_token.loc[biggest] / 1e12,
                     "max tokens": int(biggest), "preset TFLOP/s": hw.matmul_flops_per_s / 1e12})
    return pd.DataFrame(rows)


def decode_residuals(frame: pd.DataFrame) -> pd.DataFrame:
    """Measured − modelled time of single-request decode steps, per layer: what the roofline lacks."""
    single = frame[(frame.op == "decode") & (frame.bs == 1)]
    single = single.assign(layers=single.model.map(lambda m: NETWORKS[m].num_layers))
    out = single.assign(**{
        "measured ms": single.measured_s * 1e3,
        "graph step ms": single.graph_s * 1e3,
        "eager step ms": single.eager_s * 1e3,
        "unexplained us/layer (graph)": (single.measured_s - single.graph_s) / single.layers * 1e6,
        "unexplained us/layer (eager)": (single.measured_s - single.eager_s) / single.layers * 1e6})
    columns = ["measured ms", "graph step ms", "eager step ms", "unexplained us/layer (graph)",
               "unexplained us/layer (eager)"]
    return out.groupby(["source", "model", "device", "tp"])[columns].median().reset_index()


def headline(vidur: pd.DataFrame, whole: pd.DataFrame) -> list[str]:
    def median_err(frame, kind):
        return float(np.median(frame[f"{kind}_s"] / frame.measured_s - 1))

    tp1 = vidur[vidur.tp == 1]
    decode, prefill = whole[whole.op == "decode"], whole[whole.op == "prefill"]
    lines = [
        f"- Single dense linears (Vidur, TP 1): median error {median_err(tp1, 'graph'):+.0%} "
        f"(all TP: {median_err(vidur, 'graph'):+.0%}).",
        f"- Whole prefill steps (Splitwise + DistServe): median error {median_err(prefill, 'eager'):+.0%}.",
        f"- Whole decode steps: median error {median_err(decode, 'graph'):+.0%} charging one graph replay, "
        f"{median_err(decode, 'eager'):+.0%} charging eager launches.",
    ]
    for tp, part in decode.groupby("tp"):
        lines.append(f"  - decode at TP {tp}: {median_err(part, 'graph'):+.0%} (graph), "
                     f"{median_err(part, 'eager'):+.0%} (eager), n = {len(part)}")
    return lines


def report(vidur: pd.DataFrame, splitwise: pd.DataFrame, distserve: pd.DataFrame, command: str) -> str:
    whole = pd.concat([splitwise, distserve])
    everything = pd.concat([vidur.assign(kind="linear op"), whole.assign(kind=whole.op)])
    return "\n".join([
        "# Roofline presets vs measured GPU timings (other simulators' profiling data)", "",
        f"Command: `{command}`  ", f"Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC  ", "",
        "Error = ours / measured − 1 (negative: the roofline is too fast). Columns: 'forward' = the "
        "roofline forward alone; 'graph' = the step the simulator charges with one CUDA-graph replay "
        "(prefill is always charged eager launches); 'eager' = the step with eager launches. Vidur "
        "rows are single operators: 'graph'/'eager' add one kernel floor. DistServe rows compare "
        "against DistServe's own fitted curves, not raw measurements. Nothing here was used to set "
        "any roofline preset number (the fitted profiles, `--cost fitted`, are fitted to this data: "
        "benchmarks/results/cost_fit.md).", "",
        "## Headline", "", *headline(vidur, whole), "",
        "## Overall", "", markdown(error_summary(everything, ["source", "kind"])), "",
        "## Vidur: dense linears by token range (TP 1/2/4/8)", "", markdown(vidur_regimes(vidur)), "",
        "## Vidur: achieved rates of the measured TP-1 linears vs the preset rates", "",
        markdown(achieved_rates(vidur), "{:.1f}"), "",
        "## Single-request decode: time per layer the model does not explain", "",
        markdown(decode_residuals(whole), "{:.1f}"), "",
        "## Splitwise and DistServe by model, device, TP and phase", "",
        markdown(error_summary(whole, ["source", "model", "device", "tp", "op"])), "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiling", type=Path, default=DATA)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cost_crosscheck.md"))
    args = parser.parse_args(argv)
    if not args.profiling.is_dir():
        print(f"cost_crosscheck: no profiling data at {args.profiling}", file=sys.stderr)
        return 2
    vidur, whole = vidur_rows(args.profiling), whole_rows(args.profiling)
    splitwise, distserve = whole[whole.source == "splitwise"], whole[whole.source != "splitwise"]
    command = "python benchmarks/cost_crosscheck.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    text = report(vidur, splitwise, distserve, command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(args.out)
    csv = args.out.with_suffix(".csv")  # whole-model rows; Vidur's 11k operator rows stay summarised
    pd.concat([splitwise, distserve]).to_csv(csv.with_suffix(".tmp"), index=False, float_format="%.6g")
    csv.with_suffix(".tmp").replace(csv)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
