"""The draft/target pair a runtime command runs on: real weights (echo_runtime.models) or random
weights of a real shape (echo_runtime.random_models, timing only), plus the labels results carry.

Shared by `echo-run live`, `calibrate` and `validate` so the options are spelled once.
"""

from __future__ import annotations

import argparse
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

from echo_runtime.models import DTYPES, ModelLoadError, load_model, resolve_dtype
from echo_runtime.random_models import SHAPES, random_pair

DEFAULT_MODEL_DIR = "models/qwen-coder"  # get-qwen-coder-pair.sh DEST; or set $ECHO_MODEL_DIR
DEFAULT_TARGET_GGUF = "qwen2.5-coder-1.5b-instruct-q4km.gguf"
DEFAULT_DRAFT_GGUF = "qwen2.5-coder-0.5b-instruct-awq-q4km.gguf"


@dataclass(frozen=True)
class Pair:
    target: torch.nn.Module
    draft: torch.nn.Module
    tokenizer: object | None  # None for random weights
    target_label: str
    draft_label: str
    eos_token_ids: tuple[int, ...]
    dtype: str
    device: str
    random_weights: bool


def add_pair_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("models")
    group.add_argument("--target", default=os.environ.get("ECHO_MODEL_DIR", DEFAULT_MODEL_DIR),
                       help="target: Hugging Face id or folder (default: $ECHO_MODEL_DIR or %(default)s)")
    group.add_argument("--draft", help="draft: Hugging Face id or folder (default: --target's folder)")
    group.add_argument("--target-gguf", default=DEFAULT_TARGET_GGUF,
                       help="GGUF file inside --target ('' for a plain folder; default %(default)s)")
    group.add_argument("--draft-gguf", default=DEFAULT_DRAFT_GGUF,
                       help="GGUF file inside --draft ('' for a plain folder; default %(default)s)")
    group.add_argument("--random-shape", choices=sorted(SHAPES),
                       help="timing only: random weights of this shape (target) and a 1-layer draft head")
    group.add_argument("--dtype", default=None, choices=list(DTYPES),
                       help="float32 on CPU, bfloat16 on CUDA unless given")
    group.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the models run")
    group.add_argument("--threads", type=int, default=1,
                       help="torch CPU threads (default 1: on a shared machine every op of a 2-thread "
                            "forward waits a scheduler slice for its second thread, measured 12 ms/op; 0 = torch's choice)")
    group.add_argument("--model-cache", type=Path, help="GGUF -> safetensors cache folder "
                       "(default $ECHO_MODEL_CACHE or ~/.cache/echo_toolkit/models)")


def _label(source: str, gguf: str | None) -> str:
    if gguf:
        return Path(gguf).stem.replace("-instruct", "").replace("-awq", "").replace("-q4km", "")
    return Path(source).name or source


def pair_labels(args: argparse.Namespace) -> tuple[str, str]:
    """(target, draft) labels of the pair the options name, without loading it."""
    if args.random_shape:
        return f"{args.random_shape} (random weights)", f"{args.random_shape} 1-layer head (random weights)"
    draft_source = args.draft or args.target
    return _label(args.target, args.target_gguf), _label(draft_source, args.draft_gguf)


def check_pair_args(args: argparse.Namespace) -> None:
    """Everything about the pair that can be checked without loading it (call before any write)."""
    if args.threads < 0:
        raise ValueError(f"--threads must be >= 0 (0 = torch's choice), got {args.threads}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here")
    if args.random_shape:
        return
    for source, gguf in ((args.target, args.target_gguf), (args.draft or args.target, args.draft_gguf)):
        path = Path(source) / gguf if gguf else Path(source)
        local = gguf or source.startswith((".", "/")) or path.exists()
        if local and not path.exists():
            raise ModelLoadError(f"{'GGUF file' if gguf else 'model folder'} not found: {path}")


def load_pair(args: argparse.Namespace) -> Pair:
    """The pair the options name; raises ModelLoadError / ValueError with one clear line."""
    check_pair_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype_name = args.dtype or ("bfloat16" if args.device == "cuda" else "float32")
    dtype = resolve_dtype(dtype_name)
    target_label, draft_label = pair_labels(args)
    if args.random_shape:
        target, draft = random_pair(args.random_shape, dtype, args.device)
        return Pair(target, draft, None, target_label, draft_label, (), dtype_name, args.device, True)
    target = load_model(args.target, args.target_gguf or None, dtype_name, args.model_cache)
    draft = load_model(args.draft or args.target, args.draft_gguf or None, dtype_name, args.model_cache)
    from echo_runtime.trace_gen import eos_token_ids

    return Pair(target.model.to(args.device), draft.model.to(args.device), target.tokenizer,
                target_label, draft_label, tuple(eos_token_ids(target)), dtype_name, args.device, False)


def hardware_label(device: str) -> str:
    """cpu-<cores>core or the CUDA device's name (what a calibration file records)."""
    if device == "cuda":
        return torch.cuda.get_device_name().replace(" ", "-").lower()
    return f"cpu-{os.cpu_count()}core"


def machine_fingerprint() -> dict[str, str]:
    """What a calibration is only valid for: CPU model, CPU count, torch build (+cpu / +cuXXX),
    and the GPU when there is one. Recorded by `calibrate`, compared by `validate`."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    fingerprint = {"cpu_model": cpu, "cpu_count": str(os.cpu_count()), "torch": torch.__version__}
    if torch.cuda.is_available():
        fingerprint["gpu"] = torch.cuda.get_device_name()
    return fingerprint


def fingerprint_mismatch(software: dict) -> str | None:
    """None when a calibration's recorded machine is this one; else what differs, in words."""
    here = machine_fingerprint()
    recorded = {key: software.get(key) for key in here}
    if recorded.get("cpu_model") is None:
        return "it records no machine fingerprint (made before fingerprints were recorded)"
    differ = [f"{key} {recorded[key]!r} there, {here[key]!r} here" for key in here if recorded[key] != here[key]]
    return "; ".join(differ) or None


def software_versions() -> dict[str, str]:
    import numpy
    import transformers

    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__, "numpy": numpy.__version__,
                "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                "torch_threads": str(torch.get_num_threads()), **machine_fingerprint()}
    try:
        import triton

        versions["triton"] = triton.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
    return versions
