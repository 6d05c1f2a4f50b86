"""Public GPU measurements of other simulators (benchmarks/data/profiling, SOURCES.md there) as rows
our cost model can predict: shared by cost_crosscheck.py (roofline vs measured) and fit_cost.py
(fit, then hold out).

Rows (pandas, one per measurement):
    source      "vidur", "splitwise", "distserve:distserve", "distserve:vllm"
    device      "a100" / "h100";  model;  tp
    op          a Vidur operator name, or "prefill" / "decode" (whole steps)
    tokens      Vidur: tokens of the operator call
    bs, prompt  whole steps: batch size; prompt length (prefill) or cached context (decode)
    measured_s  seconds (Vidur and Splitwise: measured medians / means; DistServe: its fitted curves
                evaluated on a grid, not raw measurements)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from echo_sim.cost.presets import ModelSpec, NetworkSpec, load_hardware, load_model
from echo_sim.cost.roofline import RooflineTerms

DATA = Path(__file__).resolve().parent / "data" / "profiling"
LINEAR_OPS = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")  # = NetworkCost.linear_ops order
# Vidur's element-wise operators of one layer; `add` is profiled once and runs twice (two residuals).
ELEMENTWISE_OPS = {"input_layernorm": 1, "post_attention_layernorm": 1, "attn_rope": 1, "mlp_act": 1, "add": 2}
WHOLE_STEP_SOURCES = ("splitwise", "distserve:distserve", "distserve:vllm")


def network(name, layers, hidden, heads, kv_heads, ffn, vocab, gated=True, kernels=10) -> NetworkSpec:
    return NetworkSpec(name=name, num_layers=layers, hidden_size=hidden, num_heads=heads,
                       num_kv_heads=kv_heads, head_dim=hidden // heads, intermediate_size=ffn,
                       vocab_size=vocab, kernels_per_layer=kernels, gated_mlp=gated,
                       attention_input_size=hidden)


def bare_model(net: NetworkSpec) -> ModelSpec:
    return ModelSpec(name=net.name, target=net, draft=None, draft_kind="none", tensor_parallel=1,
                     dtype="bf16", source="public config.json (benchmarks/profiling_data.py)")


# Architectures from each model's public config.json.
NETWORKS = {
    "llama-3-8b": load_model("llama-3.1-8b").target,
    "llama-2-7b": network("llama-2-7b", 32, 4096, 32, 32, 11008, 32000),
    "llama2-70b": network("llama2-70b", 80, 8192, 64, 8, 28672, 32000),
    "bloom-176b": network("bloom-176b", 70, 14336, 112, 112, 4 * 14336, 250880, gated=False, kernels=12),
    "opt-13b": network("opt-13b", 40, 5120, 40, 40, 20480, 50272, gated=False, kernels=12),
    "opt-66b": network("opt-66b", 64, 9216, 72, 72, 36864, 50272, gated=False, kernels=12),
}
VIDUR_FILES = {("a100", "llama-3-8b"): "vidur_a100_Meta-Llama-3-8B_mlp.csv",
               ("h100", "llama-2-7b"): "vidur_h100_Llama-2-7b-hf_mlp.csv"}


def vidur_rows(root: Path = DATA) -> pd.DataFrame:
    """One row per (device, tp, tokens, operator): the four linears and the element-wise sum ("elementwise")."""
    rows = []
    for (device, model), name in VIDUR_FILES.items():
        data = pd.read_csv(root / name)
        grouped = data.groupby(["num_tensor_parallel_workers", "num_tokens"]).mean()
        for (tp, tokens), r in grouped.iterrows():
            common = dict(source="vidur", device=device, model=model, tp=int(tp), tokens=int(tokens))
            rows += [dict(common, op=op, measured_s=r[f"time_stats.{op}.median"] / 1e3) for op in LINEAR_OPS]
            elementwise = sum(n * r[f"time_stats.{op}.median"] for op, n in ELEMENTWISE_OPS.items())
            rows.append(dict(common, op="elementwise", measured_s=elementwise / 1e3))
    return pd.DataFrame(rows)


def splitwise_rows(root: Path = DATA) -> pd.DataFrame:
    """Prompt and per-token decode times, mean of the repeats. Decode context: prompt + half the output."""
    data = pd.read_csv(root / "splitwise_perf_model.csv")
    keys = ["model", "hardware", "tensor_parallel", "prompt_size", "batch_size", "token_size"]
    data = data.groupby(keys)[["prompt_time", "token_time"]].mean().reset_index()
    rows = []
    for r in data.itertuples():
        common = dict(source="splitwise", device=r.hardware.split("-")[0], model=r.model,
                      tp=int(r.tensor_parallel), bs=int(r.batch_size))
        rows.append(dict(common, op="prefill", prompt=int(r.prompt_size), measured_s=r.prompt_time / 1e3))
        rows.append(dict(common, op="decode", prompt=int(r.prompt_size + r.token_size / 2),
                         measured_s=r.token_time / 1e3))
    return pd.DataFrame(rows)


def distserve_rows(root: Path = DATA) -> pd.DataFrame:
    """DistServe's fitted curves (its own engine and vLLM) evaluated on a grid of shapes."""
    rows = []
    for engine in ("distserve", "vllm"):
        fits = json.loads((root / f"profiler-a100-80g.{engine}.json").read_text())
        for model, by_tp in fits.items():
            for tp, fit in by_tp.items():
                common = dict(source=f"distserve:{engine}", device="a100", model=model.split("/")[1], tp=int(tp))
                a, b, c = fit["prefill"]
                for bs in (1, 4):
                    for length in (64, 128, 256, 512, 1024, 2048):
                        rows.append(dict(common, op="prefill", bs=bs, prompt=length,
                                         measured_s=(a + b * bs * length + c * bs * length ** 2) / 1e3))
                for bs in (1, 4, 16, 64, 128, 256):
                    regime = "decoding_smallbs" if bs <= fit["decoding_large_small_bs_threshold"] else "decoding_largebs"
                    a, b, c = fit[regime]
                    for context in (128, 512, 1024):
                        rows.append(dict(common, op="decode", bs=bs, prompt=context,
                                         measured_s=(a + b * bs * context + c * bs) / 1e3))
    return pd.DataFrame(rows)


def whole_step_rows(root: Path = DATA) -> pd.DataFrame:
    return pd.concat([splitwise_rows(root), distserve_rows(root)], ignore_index=True)


def forward_seconds(terms: RooflineTerms, rows: pd.DataFrame) -> np.ndarray:
    """Seconds [n] of the target forward of each whole-step row (all rows share terms' model and TP).

    decode: bs tokens, each over `prompt` cached tokens; prefill: bs prompts of `prompt` tokens,
    causal, logits for the last token of each.
    """
    bs, length = rows.bs.to_numpy(float), rows.prompt.to_numpy(float)
    decode = (rows.op == "decode").to_numpy()
    tokens = np.where(decode, bs, bs * length)
    kv = np.where(decode, bs * length, 0.0)
    pairs = np.where(decode, bs * (length + 1), bs * length * (length + 1) / 2)
    logits = bs
    return terms.target.forward(tokens, kv, pairs, logits)


def predict_whole_steps(rows: pd.DataFrame, terms_for) -> pd.DataFrame:
    """forward_s and the launch costs per row; `terms_for(device, model, tp)` -> RooflineTerms."""
    forward, graph, eager = np.zeros(len(rows)), np.zeros(len(rows)), np.zeros(len(rows))
    for (device, model, tp), index in rows.groupby(["device", "model", "tp"]).groups.items():
        terms = terms_for(device, model, int(tp))
        at = rows.index.get_indexer(index)
        forward[at] = forward_seconds(terms, rows.loc[index])
        graph[at], eager[at] = terms.hw.graph_launch_s, terms.target_eager_s
    return pd.DataFrame({"forward_s": forward, "graph_launch_s": graph, "eager_launch_s": eager}, index=rows.index)


def fits_in_memory(rows: pd.DataFrame, fraction: float = 0.9) -> np.ndarray:
    """bool [n]: the step's weights + KV cache fit `fraction` of one GPU's memory. DistServe's fitted
    curves are evaluated on a grid that includes shapes no 80 GB GPU can hold (OPT-13B at TP 1 with
    256 requests of 1024 tokens needs 215 GB of KV); those rows are not measurements of anything."""
    keep = np.ones(len(rows), dtype=bool)
    for (device, model, tp), index in rows.groupby(["device", "model", "tp"]).groups.items():
        hw = load_hardware(device)
        net = RooflineTerms(hw, bare_model(NETWORKS[model]), int(tp)).target
        part = rows.loc[index]
        kv = part.bs * part.prompt * net.kv_cache_bytes_per_token()
        keep[rows.index.get_indexer(index)] = (kv + net.weight_bytes() <= fraction * hw.memory_capacity_bytes).to_numpy()
    return keep
