"""Cross-check the roofline presets against measured GPU timings published by other simulators.

    python benchmarks/cost_crosscheck.py [--profiling ../shared/data/profiling]
                                         [--out benchmarks/results/cost_crosscheck.md]

Data (../shared/data/profiling, read in place, not copied; SOURCES.md there has provenance):
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
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from echo_sim.cost.presets import ModelSpec, NetworkSpec, load_hardware, load_model
from echo_sim.cost.roofline import RooflineTerms

VIDUR_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")  # = linear_ops order


def network(name, layers, hidden, heads, kv_heads, ffn, vocab, gated=True, kernels=10) -> NetworkSpec:
    return NetworkSpec(name=name, num_layers=layers, hidden_size=hidden, num_heads=heads,
                       num_kv_heads=kv_heads, head_dim=hidden // heads, intermediate_size=ffn,
                       vocab_size=vocab, kernels_per_layer=kernels, gated_mlp=gated,
                       attention_input_size=hidden)


def bare_model(net: NetworkSpec) -> ModelSpec:
    return ModelSpec(name=net.name, target=net, draft=None, draft_kind="none", tensor_parallel=1,
                     dtype="bf16", source="public config.json (benchmarks/cost_crosscheck.py)")


LLAMA2_7B = network("llama-2-7b", 32, 4096, 32, 32, 11008, 32000)
LLAMA2_70B = network("llama-2-70b", 80, 8192, 64, 8, 28672, 32000)
BLOOM_176B = network("bloom-176b", 70, 14336, 112, 112, 4 * 14336, 250880, gated=False, kernels=12)
OPT_13B = network("opt-13b", 40, 5120, 40, 40, 20480, 50272, gated=False, kernels=12)
OPT_66B = network("opt-66b", 64, 9216, 72, 72, 36864, 50272, gated=False, kernels=12)


def decode_step(terms: RooflineTerms, bs: int, context: float) -> dict:
    """Seconds of one decode iteration of bs requests with `context` cached each: the forward,
    and the whole step with one graph replay or with eager launches."""
    kv = bs * context
    forward = float(terms.verify_forward(np.array([bs]), bs, kv, np.array([bs * (context + 1)]))[0])
    graph, eager = terms.launch(np.array([False, True]))
    return dict(forward_s=forward, graph_s=forward + graph + terms.scheduler(bs),
                eager_s=forward + eager + terms.scheduler(bs))


def prefill_step(terms: RooflineTerms, lengths: list[int]) -> dict:
    """Seconds of one prefill batch of prompts with the given lengths (always eager launches)."""
    tokens, pairs = sum(lengths), sum(n * (n + 1) / 2 for n in lengths)
    forward = float(terms.target.forward(tokens, 0.0, pairs, float(len(lengths)))[0])
    step = forward + terms.target_eager_s + terms.scheduler(len(lengths))
    return dict(forward_s=forward, graph_s=step, eager_s=step)


def vidur_rows(root: Path) -> pd.DataFrame:
    cases = [("a100", "Meta-Llama-3-8B", "llama-3-8b", load_model("llama-3.1-8b").target),
             ("h100", "Llama-2-7b-hf", "llama-2-7b", LLAMA2_7B)]
    rows = []
    for device, folder, label, net in cases:
        data = pd.read_csv(root / "vidur/compute" / device / "meta-llama" / folder / "mlp.csv")
        medians = [f"time_stats.{op}.median" for op in VIDUR_OPS]
        grouped = data.groupby(["num_tensor_parallel_workers", "num_tokens"])[medians].mean()
        hw = load_hardware(device)
        for tp in sorted(data.num_tensor_parallel_workers.unique()):
            part = grouped.loc[tp]
            ours = RooflineTerms(hw, bare_model(net), int(tp)).target.linear_ops(part.index.values)
            for j, op in enumerate(VIDUR_OPS):  # as charged: the op plus its kernel floor
                rows += [dict(source="vidur", device=device, model=label, tp=int(tp), op=op, tokens=int(t),
                              measured_s=m / 1e3, forward_s=o, graph_s=o + hw.kernel_floor_s,
                              eager_s=o + hw.kernel_floor_s)
                         for t, m, o in zip(part.index.values, part[medians[j]].values, ours[:, j])]
    return pd.DataFrame(rows)


def splitwise_rows(root: Path) -> pd.DataFrame:
    data = pd.read_csv(root / "splitwise-sim/perf_model.csv")
    data = data[data.hardware.isin(["a100-80gb", "h100-80gb"])]
    keys = ["model", "hardware", "tensor_parallel", "prompt_size", "batch_size", "token_size"]
    data = data.groupby(keys)[["prompt_time", "token_time"]].mean().reset_index()
    nets = {"llama2-70b": LLAMA2_70B, "bloom-176b": BLOOM_176B}
    rows = []
    for r in data.itertuples():
        terms = RooflineTerms(load_hardware(r.hardware.split("-")[0]), bare_model(nets[r.model]),
                              int(r.tensor_parallel))
        common = dict(source="splitwise", device=r.hardware.split("-")[0], model=r.model,
                      tp=int(r.tensor_parallel), bs=int(r.batch_size), prompt=int(r.prompt_size))
        rows.append(dict(common, op="prefill", measured_s=r.prompt_time / 1e3,
                         **prefill_step(terms, [r.prompt_size] * r.batch_size)))
        rows.append(dict(common, op="decode", tokens_out=int(r.token_size), measured_s=r.token_time / 1e3,
                         **decode_step(terms, r.batch_size, r.prompt_size + r.token_size / 2)))
    return pd.DataFrame(rows)


def distserve_rows(root: Path) -> pd.DataFrame:
    nets, terms_for = {"facebook/opt-13b": OPT_13B, "facebook/opt-66b": OPT_66B}, {}
    rows = []
    for engine in ("distserve", "vllm"):
        fits = json.loads((root / f"distserve/profiler-a100-80g.{engine}.json").read_text())
        for model, by_tp in fits.items():
            for tp, fit in by_tp.items():
                key = (model, tp)
                if key not in terms_for:
                    terms_for[key] = RooflineTerms(load_hardware("a100"), bare_model(nets[model]), int(tp))
                terms = terms_for[key]
                common = dict(source=f"distserve:{engine}", device="a100", model=model.split("/")[1], tp=int(tp))
                for bs in (1, 4):
                    for length in (64, 128, 256, 512, 1024, 2048):
                        a, b, c = fit["prefill"]
                        measured = (a + b * bs * length + c * bs * length ** 2) / 1e3
                        rows.append(dict(common, op="prefill", bs=bs, prompt=length, measured_s=measured,
                                         **prefill_step(terms, [length] * bs)))
                for bs in (1, 4, 16, 64, 128, 256):
                    for context in (128, 512, 1024):
                        regime = "decoding_smallbs" if bs <= fit["decoding_large_small_bs_threshold"] else "decoding_largebs"
                        a, b, c = fit[regime]
                        measured = (a + b * bs * context + c * bs) / 1e3
                        rows.append(dict(common, op="decode", bs=bs, prompt=context, measured_s=measured,
                                         **decode_step(terms, bs, context)))
    return pd.DataFrame(rows)


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
        net = LLAMA2_7B if model == "llama-2-7b" else load_model("llama-3.1-8b").target
        params = RooflineTerms(load_hardware(device), bare_model(net), 1).target.linear_params.sum()
        per_token = part.groupby("tokens").measured_s.sum()
        biggest = per_token.index.max()
        hw = load_hardware(device)
        rows.append({"device": device, "model": model,
                     "measured GB/s at 1 token": 2 * params / per_token.loc[1] / 1e9,
                     "preset GB/s": hw.memory_bytes_per_s / 1e9,
                     f"measured TFLOP/s at max tokens": 2 * params * biggest / per_token.loc[biggest] / 1e12,
                     "max tokens": int(biggest), "preset TFLOP/s": hw.matmul_flops_per_s / 1e12})
    return pd.DataFrame(rows)


def markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    """A GitHub table (no extra dependency). Floats to `digits` places."""
    def cell(x) -> str:
        return f"{x:.{digits}f}" if isinstance(x, (float, np.floating)) else str(x)
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines)


LAYERS = {"llama2-70b": 80, "bloom-176b": 70, "opt-13b": 40, "opt-66b": 64}


def decode_residuals(frame: pd.DataFrame) -> pd.DataFrame:
    """Measured − modelled time of single-request decode steps, per layer: what the roofline lacks."""
    single = frame[(frame.op == "decode") & (frame.bs == 1)]
    single = single.assign(layers=single.model.map(LAYERS))
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
        "any preset number.", "",
        "## Headline", "", *headline(vidur, whole), "",
        "## Overall", "", markdown(error_summary(everything, ["source", "kind"])), "",
        "## Vidur: dense linears by token range (TP 1/2/4/8)", "", markdown(vidur_regimes(vidur)), "",
        "## Vidur: achieved rates of the measured TP-1 linears vs the preset rates", "",
        markdown(achieved_rates(vidur), 1), "",
        "## Single-request decode: time per layer the model does not explain", "",
        markdown(decode_residuals(whole), 1), "",
        "## Splitwise and DistServe by model, device, TP and phase", "",
        markdown(error_summary(whole, ["source", "model", "device", "tp", "op"])), "",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiling", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/profiling")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cost_crosscheck.md"))
    args = parser.parse_args(argv)
    if not args.profiling.is_dir():
        print(f"cost_crosscheck: no profiling data at {args.profiling}", file=sys.stderr)
        return 2
    vidur, splitwise, distserve = (fn(args.profiling) for fn in (vidur_rows, splitwise_rows, distserve_rows))
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
