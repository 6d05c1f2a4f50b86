"""Hardware and model presets for the step-time model, read from echo_sim/presets/*.json.

Preset files are data, not code: every number carries its source, either per number
(`{"value": 7.8e14, "source": "..."}`) or per section (`"source"` beside plain numbers copied from a
model's config.json). docs/COST_MODEL_DEFAULTS.md lists them all.

    presets/hardware/<name>.json   rates, capacities, launch costs, engine defaults (graph buckets)
    presets/models/<name>.json     target architecture, its draft, tensor-parallel degree, dtype

Names are looked up exactly (`h200`, `llama-3.1-8b`); an unknown name is a CostModelError that
lists the known ones.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp8": 1, "fp32": 4, "float32": 4, "bfloat16": 2}
DRAFT_KINDS = ("eagle3", "model")


class CostModelError(ValueError):
    """Unknown preset, malformed preset or calibration file, or an impossible cost query."""


@dataclass(frozen=True)
class HardwareSpec:
    """One GPU type plus the serving-engine defaults measured or chosen for it (units: s, B, FLOP)."""

    name: str
    matmul_flops_per_s: float
    memory_bytes_per_s: float
    memory_capacity_bytes: float
    link_bytes_per_s: float          # per GPU, each direction (all-reduce bandwidth term)
    allreduce_latency_s: float
    kernel_launch_s: float           # eager: host cost of launching one kernel
    kernel_floor_s: float            # every kernel, graph or eager: minimum duration + gap
    graph_launch_s: float            # one CUDA-graph replay
    scheduler_step_s: float
    scheduler_per_request_s: float
    kv_memory_fraction: float
    prefill_chunk_tokens: int
    graph_buckets: tuple[int, ...]
    source: str


@dataclass(frozen=True)
class NetworkSpec:
    """One transformer stack (a target, or a draft). MoE when num_experts > 0.

    intermediate_size is the dense MLP width, or one expert's width for MoE layers.
    attention_input_size: width the QKV projections read (2 x hidden for EAGLE-3 heads).
    input_fc_size: EAGLE-3's feature-fusion input width (0 = none); applied at draft level 1 only.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    kernels_per_layer: int
    gated_mlp: bool = True
    num_experts: int = 0
    experts_per_token: int = 0
    attention_input_size: int = 0
    input_fc_size: int = 0

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0


@dataclass(frozen=True)
class ModelSpec:
    """A target, its draft (None: no speculation possible), and how it is served."""

    name: str
    target: NetworkSpec
    draft: NetworkSpec | None
    draft_kind: str
    tensor_parallel: int
    dtype: str
    source: str

    @property
    def bytes_per_param(self) -> int:
        return DTYPE_BYTES[self.dtype]


def _number(section: dict, key: str, where: str, *, integer: bool = False,
            minimum: float = 0.0, allow_equal: bool = True, default: Any = None) -> Any:
    """A finite number from `key` (plain, or {"value": x, "source": s}); CostModelError otherwise."""
    if key not in section:
        if default is not None:
            return default
        raise CostModelError(f"{where}: missing field '{key}'")
    raw = section[key]
    if isinstance(raw, dict):
        if "value" not in raw:
            raise CostModelError(f"{where}: field '{key}' has no 'value'")
        raw = raw["value"]
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        raise CostModelError(f"{where}: field '{key}' = {raw!r} is not a number")
    if not math.isfinite(raw):
        raise CostModelError(f"{where}: field '{key}' = {raw!r} is not finite")
    if integer and int(raw) != raw:
        raise CostModelError(f"{where}: field '{key}' = {raw!r} is not an integer")
    too_small = raw < minimum if allow_equal else raw <= minimum
    if too_small:
        bound = ">=" if allow_equal else ">"
        raise CostModelError(f"{where}: field '{key}' = {raw!r} must be {bound} {minimum}")
    return int(raw) if integer else float(raw)


def _buckets(section: dict, where: str) -> tuple[int, ...]:
    raw = section.get("graph_buckets")
    raw = raw.get("value") if isinstance(raw, dict) else raw
    if not isinstance(raw, list) or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0
                                            for b in raw):
        raise CostModelError(f"{where}: field 'graph_buckets' must be a list of positive integers")
    if sorted(set(raw)) != raw:
        raise CostModelError(f"{where}: field 'graph_buckets' must be sorted and without repeats")
    return tuple(raw)


def hardware_from_dict(data: dict, where: str) -> HardwareSpec:
    positive = dict(minimum=0.0, allow_equal=False)
    return HardwareSpec(
        name=str(data.get("name", where)),
        matmul_flops_per_s=_number(data, "matmul_flops_per_s", where, **positive),
        memory_bytes_per_s=_number(data, "memory_bytes_per_s", where, **positive),
        memory_capacity_bytes=_number(data, "memory_capacity_bytes", where, **positive),
        link_bytes_per_s=_number(data, "link_bytes_per_s", where, **positive),
        allreduce_latency_s=_number(data, "allreduce_latency_s", where),
        kernel_launch_s=_number(data, "kernel_launch_s", where),
        kernel_floor_s=_number(data, "kernel_floor_s", where),
        graph_launch_s=_number(data, "graph_launch_s", where),
        scheduler_step_s=_number(data, "scheduler_step_s", where),
        scheduler_per_request_s=_number(data, "scheduler_per_request_s", where),
        kv_memory_fraction=_number(data, "kv_memory_fraction", where, **positive),
        prefill_chunk_tokens=_number(data, "prefill_chunk_tokens", where, integer=True, minimum=1),
        graph_buckets=_buckets(data, where),
        source=where,
    )


def network_from_dict(data: dict, where: str) -> NetworkSpec:
    def whole(key: str, minimum: int = 1, default: Any = None) -> int:
        return _number(data, key, where, integer=True, minimum=minimum, default=default)

    hidden = whole("hidden_size")
    num_experts = whole("num_experts", minimum=0, default=0)
    width_key = "moe_intermediate_size" if num_experts else "intermediate_size"
    spec = NetworkSpec(
        name=str(data.get("name", where)),
        num_layers=whole("num_hidden_layers"),
        hidden_size=hidden,
        num_heads=whole("num_attention_heads"),
        num_kv_heads=whole("num_key_value_heads"),
        head_dim=whole("head_dim"),
        intermediate_size=whole(width_key),
        vocab_size=whole("vocab_size"),
        kernels_per_layer=whole("kernels_per_layer"),
        gated_mlp=bool(data.get("gated_mlp", True)),
        num_experts=num_experts,
        experts_per_token=whole("num_experts_per_tok", minimum=1) if num_experts else 0,
        attention_input_size=whole("attention_input_size", default=hidden),
        input_fc_size=whole("input_fc_size", minimum=0, default=0),
    )
    if spec.experts_per_token > spec.num_experts:
        raise CostModelError(f"{where}: num_experts_per_tok > num_experts")
    return spec


def model_from_dict(data: dict, where: str) -> ModelSpec:
    dtype = data.get("dtype", "bf16")
    if dtype not in DTYPE_BYTES:
        raise CostModelError(f"{where}: field 'dtype' = {dtype!r}; known: {sorted(DTYPE_BYTES)}")
    if not isinstance(data.get("target"), dict):
        raise CostModelError(f"{where}: missing section 'target'")
    draft, kind = None, "none"
    if data.get("draft") is not None:
        kind = data["draft"].get("kind")
        if kind not in DRAFT_KINDS:
            raise CostModelError(f"{where}: draft 'kind' = {kind!r}; known: {list(DRAFT_KINDS)}")
        draft = network_from_dict(data["draft"], f"{where} [draft]")
    return ModelSpec(
        name=str(data.get("name", where)),
        target=network_from_dict(data["target"], f"{where} [target]"),
        draft=draft,
        draft_kind=kind,
        tensor_parallel=_number(data, "tensor_parallel", where, integer=True, minimum=1, default=1),
        dtype=dtype,
        source=where,
    )


def _preset_dir(kind: str) -> Path:
    return Path(str(resources.files("echo_sim") / "presets" / kind))


def known_presets(kind: str) -> list[str]:
    """Sorted preset names of one kind ("hardware" or "models")."""
    return sorted(path.stem for path in _preset_dir(kind).glob("*.json"))


def read_json(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CostModelError(f"{path}: no such file") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CostModelError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(data, dict):
        raise CostModelError(f"{path}: top level must be a JSON object")
    return data


def _load(kind: str, name: str) -> tuple[dict, str]:
    known = known_presets(kind)
    if name not in known:
        label = "hardware" if kind == "hardware" else "model"
        raise CostModelError(f"unknown {label} preset {name!r}; known: {', '.join(known)}")
    path = _preset_dir(kind) / f"{name}.json"
    return read_json(path), f"presets/{kind}/{name}.json"


def load_hardware(name: str) -> HardwareSpec:
    data, where = _load("hardware", name)
    return hardware_from_dict(data, where)


def load_model(name: str) -> ModelSpec:
    data, where = _load("models", name)
    return model_from_dict(data, where)
