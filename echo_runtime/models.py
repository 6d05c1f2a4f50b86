"""Load a causal LM and its tokenizer (Hugging Face id, local folder, or GGUF file), with a fast path.

A GGUF load dequantizes every tensor and rebuilds the tokenizer from GGUF metadata, which takes
minutes on a small CPU. The first load therefore writes the dequantized model as plain safetensors
plus config (without `quantization_config`) and the tokenizer into a cache folder keyed by the GGUF
file's sha256; every load (the first one included) then reads that folder, so the first and later
loads give bit-identical weights. Weights never go into the repository: the cache lives outside it
($ECHO_MODEL_CACHE or ~/.cache/echo_toolkit/models, or --model-cache).

The weight files' sha256 are reported for trace headers (TRACES.md): for a GGUF the original file,
for a folder every *.safetensors / *.bin weight file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf")
CACHE_FORMAT = 1  # bump when the cache layout changes, so stale folders are rebuilt


class ModelLoadError(ValueError):
    """A model source cannot be used (missing file, unknown dtype); the message names it."""


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for inference (eval mode, no grad needed) with its tokenizer and provenance."""

    model: torch.nn.Module
    tokenizer: object
    name: str  # HF id, or the local folder's / GGUF file's name (paths are machine-specific)
    weight_sha256: dict[str, str]  # weight file name -> sha256 hex
    dtype: str


def default_cache_dir() -> Path:
    return Path(os.environ.get("ECHO_MODEL_CACHE", Path.home() / ".cache" / "echo_toolkit" / "models"))


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ModelLoadError(f"--dtype: unknown dtype {name!r} (choose from {', '.join(DTYPES)})")
    return DTYPES[name]


def load_model(source: str, gguf_file: str | None = None, dtype: str = "float32",
               cache_dir: Path | None = None) -> LoadedModel:
    """Load `source` (HF id or folder; with `gguf_file`, the GGUF file inside that folder)."""
    torch_dtype = resolve_dtype(dtype)
    if gguf_file is None and source.endswith(".gguf"):
        source, gguf_file = str(Path(source).parent), Path(source).name
    if gguf_file is not None:
        gguf_path = Path(source) / gguf_file
        if not gguf_path.is_file():
            raise ModelLoadError(f"GGUF file not found: {gguf_path}")
        sha = file_sha256(gguf_path)
        folder = _gguf_cache_folder(gguf_path, sha, cache_dir or default_cache_dir())
        model, tokenizer = _load_plain(str(folder), torch_dtype)
        return LoadedModel(model, tokenizer, gguf_path.name, {gguf_file: sha}, dtype)
    folder = _local_folder(source)
    model, tokenizer = _load_plain(str(folder), torch_dtype)
    name = Path(source).name if Path(source).is_dir() else source
    return LoadedModel(model, tokenizer, name, _folder_weight_sha256(folder), dtype)


def _load_plain(folder: str, torch_dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError, KeyError) as error:  # invalid config.json, missing or damaged files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelLoadError(f"{folder}: cannot load the model ({first})") from None
    model.eval()
    return model, tokenizer


def _local_folder(source: str) -> Path:
    """A local folder as is; a Hub id through the Hugging Face cache (downloads only if reachable)."""
    if Path(source).is_dir():
        return Path(source)
    if Path(source).exists() or source.startswith((".", "/")):
        raise ModelLoadError(f"model folder not found: {source}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source))
    except Exception as error:  # offline, unknown id, ...: one clear line
        raise ModelLoadError(f"cannot resolve model {source!r}: {error.__class__.__name__}: {error}") from None


def _folder_weight_sha256(folder: Path) -> dict[str, str]:
    files = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if not files:
        raise ModelLoadError(f"no weight files (*.safetensors, *.bin) in {folder}")
    return {p.name: file_sha256(p) for p in files}


def _gguf_cache_folder(gguf_path: Path, sha: str, cache_dir: Path) -> Path:
    """The plain-safetensors copy of this GGUF, built once (atomically) if missing."""
    folder = cache_dir / f"{gguf_path.stem}-{sha[:16]}"
    meta_path = folder / "echo_cache.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()).get("cache_format") == CACHE_FORMAT:
        return folder
    _check_gguf_readable(gguf_path)  # a damaged file must not leave a cache folder behind
    created = not cache_dir.exists()
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=cache_dir))
    try:
        _convert_gguf(gguf_path, staging)
    except (OSError, ValueError, KeyError) as error:
        shutil.rmtree(staging, ignore_errors=True)
        if created:
            shutil.rmtree(cache_dir, ignore_errors=True)
        raise ModelLoadError(f"{gguf_path}: cannot convert the GGUF file ({error})") from None
    try:
        (staging / "echo_cache.json").write_text(json.dumps(
            {"cache_format": CACHE_FORMAT, "gguf_file": gguf_path.name, "gguf_sha256": sha}, indent=1))
        if folder.exists():  # an older or broken cache layout
            shutil.rmtree(folder)
        os.replace(staging, folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return folder


def _check_gguf_readable(gguf_path: Path) -> None:
    """ModelLoadError unless the GGUF header, metadata and tensor table parse (truncated files fail here)."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(gguf_path))
    except Exception as error:  # the reader raises ValueError, struct.error, IndexError, ... on damage
        raise ModelLoadError(f"{gguf_path}: not a readable GGUF file ({type(error).__name__}: {error})") from None
    if "general.architecture" not in reader.fields:
        raise ModelLoadError(f"{gguf_path}: not a model GGUF file (no general.architecture in its metadata)")


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantize once to float32 and save config + safetensors + tokenizer into `out`."""
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights below are plain float32
    config.pop("_name_or_path", None)
    (out / "config.json").write_text(json.dumps(config, indent=1, default=str))
    # save_model drops the tied lm_head copy (shared storage) that save_file would reject.
    save_model(model, str(out / "model.safetensors"), metadata={"format": "pt"})
    model.generation_config.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
