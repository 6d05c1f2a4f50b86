"""Per-request checkpoints of `echo-run trace`, and assembly of the final TraceSet from them.

Layout: next to the output file OUT, a folder OUT.parts/ holds
    params.json          the parameters that decide the content (models' sha256, dtype, k, S, ...)
    target/<id>.npz      a request's target output, saved as soon as its (batched) decode ends
    <request id>.npz     one finished request (written atomically: temp file + os.replace)
Re-running the same command skips finished requests; different parameters are an error (naming
the field) rather than a silent mix. The final file is assembled only when every selected
request is finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from echo_runtime.lattice import RequestLattices


class TraceGenError(ValueError):
    """User error in `echo-run trace` (bad prompts file, mismatched resume, ...)."""


@dataclass(frozen=True)
class RequestPart:
    """One finished request. Shape: prompt_ids int32 [n0]; target_token int32 [L];
    target_prob float32 [L]; lattices as in RequestLattices; seconds = {"target": s, "draft": s}."""

    request_id: str
    prompt_ids: np.ndarray
    target_token: np.ndarray
    target_prob: np.ndarray
    lattices: RequestLattices
    seconds: dict


@dataclass(frozen=True)
class TargetOutput:
    """The target's greedy output for one request. Shape: token int32 [L], prob float32 [L]."""

    token: np.ndarray
    prob: np.ndarray
    seconds: float  # this request's share of its group's decode wall time


LATTICE_FIELDS = ("token", "parent", "depth", "cond_prob", "score", "on_path", "draft_rank", "draft_prob")


def parts_folder(out: Path) -> Path:
    return out.with_name(out.name + ".parts")


def _part_name(request_id: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_.-]{1,80}", request_id):
        return f"{request_id}.npz"
    return "h" + hashlib.sha256(request_id.encode()).hexdigest()[:24] + ".npz"


def _atomic_write(path: Path, write) -> None:
    handle, temp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)


class PartStore:
    """The OUT.parts folder of one generation run (see module docstring)."""

    def __init__(self, folder: Path, params: dict) -> None:
        self.folder = folder
        self.params = json.loads(json.dumps(params))  # normalised: what json gives back
        folder.mkdir(parents=True, exist_ok=True)
        params_path = folder / "params.json"
        if params_path.is_file():
            self._check_params(json.loads(params_path.read_text()), params_path)
        else:
            _atomic_write(params_path, lambda s: s.write(json.dumps(self.params, indent=1).encode()))

    def _check_params(self, stored: dict, params_path: Path) -> None:
        for key in sorted(set(stored) | set(self.params)):
            if stored.get(key) != self.params.get(key):
                raise TraceGenError(
                    f"{params_path}: finished parts were made with {key}={stored.get(key)!r}, this run "
                    f"has {key}={self.params.get(key)!r}; use the same parameters or another --out")

    def path(self, request_id: str) -> Path:
        return self.folder / _part_name(request_id)

    def has(self, request_id: str) -> bool:
        return self.path(request_id).is_file()

    def target_path(self, request_id: str) -> Path:
        return self.folder / "target" / _part_name(request_id)

    def has_target(self, request_id: str) -> bool:
        return self.target_path(request_id).is_file()

    def save_target(self, request_id: str, output: TargetOutput) -> None:
        self.target_path(request_id).parent.mkdir(exist_ok=True)
        _atomic_write(self.target_path(request_id), lambda s: np.savez(
            s, token=output.token, prob=output.prob, seconds=np.float64(output.seconds)))

    def load_target(self, request_id: str) -> TargetOutput:
        with np.load(self.target_path(request_id)) as data:
            return TargetOutput(data["token"], data["prob"], float(data["seconds"]))

    def save(self, part: RequestPart) -> None:
        arrays = {f"lattice_{name}": getattr(part.lattices, name) for name in LATTICE_FIELDS}
        meta = json.dumps({"request_id": part.request_id, "seconds": part.seconds})
        _atomic_write(self.path(part.request_id), lambda s: np.savez_compressed(
            s, meta=np.array(meta), prompt_ids=part.prompt_ids, target_token=part.target_token,
            target_prob=part.target_prob, **arrays))

    def load(self, request_id: str, prompt_ids: np.ndarray) -> RequestPart:
        path = self.path(request_id)
        with np.load(path) as data:
            meta = json.loads(str(data["meta"]))
            lattices = RequestLattices(**{name: data[f"lattice_{name}"] for name in LATTICE_FIELDS})
            part = RequestPart(meta["request_id"], data["prompt_ids"], data["target_token"],
                               data["target_prob"], lattices, meta["seconds"])
        if part.request_id != request_id or not np.array_equal(part.prompt_ids, prompt_ids):
            raise TraceGenError(f"{path}: finished part of request {request_id} was made from a different "
                                "prompt (prompts file or chat template changed); use another --out")
        return part


def assemble(parts: list[RequestPart], header: dict, trace_set_cls):
    """One TraceSet from finished requests, in the given order (flat CSR columns, TRACES.md)."""
    lengths = np.array([len(p.target_token) for p in parts], dtype=np.int32)
    nodes_each = np.concatenate([np.full(n, p.lattices.token.shape[1]) for n, p in zip(lengths, parts)])
    node_offsets = np.zeros(len(nodes_each) + 1, dtype=np.int64)
    np.cumsum(nodes_each, out=node_offsets[1:])

    def flat(name, dtype):
        return np.concatenate([getattr(p.lattices, name).reshape(-1) for p in parts]).astype(dtype)

    return trace_set_cls(
        header=header,
        request_ids=[p.request_id for p in parts],
        prompt_len=np.array([len(p.prompt_ids) for p in parts], dtype=np.int32),
        output_len=lengths,
        position_offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
        target_token=np.concatenate([p.target_token for p in parts]).astype(np.int32),
        draft_rank=flat("draft_rank", np.int16),
        draft_prob=flat("draft_prob", np.float32),
        target_prob=np.concatenate([p.target_prob for p in parts]).astype(np.float32),
        node_offsets=node_offsets,
        node_token=flat("token", np.int32),
        node_parent=flat("parent", np.int32),
        node_depth=np.concatenate([np.tile(p.lattices.depth, n) for n, p in zip(lengths, parts)]).astype(np.int32),
        node_cond_prob=flat("cond_prob", np.float32),
        node_score=flat("score", np.float32),
        node_on_path=flat("on_path", bool),
    )
