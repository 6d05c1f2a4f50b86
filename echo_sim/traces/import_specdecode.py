"""`echo-sim import-specdecode`: SpecDecode-Bench per-position acc_len logs -> a chain-only trace.

Input: JSON lines, one request each: {"id", "prompt_token_ids", "acc_<proposer>": {"acc_len": [...]}}
(other keys ignored; token ids are not used: for many EAGLE requests len(acc_len) differs from the
generated length). Rules of that data (TRACES.md "Validation data"): acc_len[i] counts the bonus
token (>= 1) and is the uncapped run from position i; a chain of k at i commits min(acc_len[i], k+1).

Mapping (checked against the logs: acc_len[0] is 1 in every request, i.e. it is the prefill step):
position t = i, output length L = len(acc_len), spine_run[t] = acc_len[t] - 1. Runs are uncapped,
so spine_run[t] may reach past L - t (the replay caps commits at the end). Token ids, draft ranks
and all confidences are declared absent; there are no lattice nodes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from echo_sim.traces.format import FORMAT_VERSION, TraceSet, write_trace

PROPOSERS = ("eagle", "ngram")
IMPORTER_VERSION = "1"
ABSENT_COLUMNS = ["target_token", "draft_rank", "draft_prob", "target_prob", "node_cond_prob", "node_score"]


class SpecDecodeFormatError(ValueError):
    """A SpecDecode-Bench log line is malformed; the message names file, line and field."""


def _acc_len(record: dict, proposer: str, where: str) -> np.ndarray:
    key = f"acc_{proposer}"
    block = record.get(key)
    if not isinstance(block, dict) or "acc_len" not in block:
        raise SpecDecodeFormatError(f"{where}: field {key}.acc_len: missing")
    raw = block["acc_len"]
    # JSON true/false are not counts (numpy would read them as 1/0); object dtype = beyond int64
    if not isinstance(raw, list) or any(isinstance(v, bool) for v in raw):
        raise SpecDecodeFormatError(f"{where}: field {key}.acc_len: must be a non-empty list of integers")
    values = np.asarray(raw)
    if values.ndim != 1 or len(values) == 0 or values.dtype.kind not in "iu":
        raise SpecDecodeFormatError(f"{where}: field {key}.acc_len: must be a non-empty list of integers")
    if values.max() > np.iinfo(np.int32).max:
        raise SpecDecodeFormatError(f"{where}: field {key}.acc_len: {int(values.max())} at index "
                                    f"{int(np.argmax(values))} does not fit the trace's int32")
    if values.min() < 1:
        raise SpecDecodeFormatError(f"{where}: field {key}.acc_len: values must be >= 1 "
                                    f"(got {int(values.min())} at index {int(np.argmin(values))})")
    return values.astype(np.int32)


def _prompt_len(record: dict, where: str) -> int:
    prompt = record.get("prompt_token_ids", [])
    if not isinstance(prompt, list):
        raise SpecDecodeFormatError(f"{where}: field prompt_token_ids: must be a list")
    return len(prompt)


def read_log(path: Path, proposer: str) -> list[tuple[str, int, np.ndarray]]:
    """[(request id, prompt length, acc_len int32 [L])] of one log file, in file order."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such SpecDecode-Bench log")
    requests = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise SpecDecodeFormatError(f"{where}: not valid JSON ({error.msg})") from None
            if not isinstance(record, dict) or "id" not in record:
                raise SpecDecodeFormatError(f"{where}: field id: missing")
            request_id = f"{path.stem}/{record['id']}"
            requests.append((request_id, _prompt_len(record, where), _acc_len(record, proposer, where)))
    if not requests:
        raise SpecDecodeFormatError(f"{path}: no requests")
    return requests


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def import_specdecode(
    paths: list[str | Path], proposer: str, target_model: str = "unknown", command: str | None = None
) -> TraceSet:
    """One chain-only TraceSet holding every request of every log (request ids '<file stem>/<id>')."""
    if proposer not in PROPOSERS:
        raise SpecDecodeFormatError(f"unknown proposer {proposer!r}; known: {', '.join(PROPOSERS)}")
    paths = [Path(p) for p in paths]
    requests = [request for path in paths for request in read_log(path, proposer)]
    ids = [request_id for request_id, _, _ in requests]
    if len(set(ids)) != len(ids):
        duplicate = next(r for i, r in enumerate(ids) if r in ids[:i])
        raise SpecDecodeFormatError(f"duplicate request id {duplicate!r} (same id twice in one file?)")
    acc_lens = [acc for _, _, acc in requests]
    lengths = np.array([len(acc) for acc in acc_lens], dtype=np.int32)
    num_positions = int(lengths.sum())
    header = {
        "format_version": FORMAT_VERSION,
        "generator": f"echo_sim.traces.import_specdecode {IMPORTER_VERSION}",
        "command": command,
        "draft_model": f"{proposer} proposer (SpecDecode-Bench log)",
        "target_model": target_model,
        "dataset": ", ".join(path.stem for path in paths),
        "sources": [{"file": path.name, "sha256": _sha256(path)} for path in paths],
        "prompt_ids": ids,
        "decoding": "greedy",
        "width": 0,
        "depth": 0,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "absent_columns": list(ABSENT_COLUMNS),
        "spine_convention": "spine_run[t] = acc_len[t] - 1, uncapped (may reach past the output's end); "
                            "acc_len[0] is the prefill step",
    }
    spine_run = np.concatenate(acc_lens) - 1
    return TraceSet(
        header=header,
        request_ids=ids,
        prompt_len=np.array([prompt for _, prompt, _ in requests], dtype=np.int32),
        output_len=lengths,
        position_offsets=np.concatenate(([0], np.cumsum(lengths))).astype(np.int64),
        target_token=np.full(num_positions, -1, dtype=np.int32),
        draft_rank=np.where(spine_run > 0, 0, -1).astype(np.int16),
        node_offsets=np.zeros(num_positions + 1, dtype=np.int64),
        node_token=np.zeros(0, dtype=np.int32),
        node_parent=np.zeros(0, dtype=np.int32),
        node_depth=np.zeros(0, dtype=np.int32),
        node_cond_prob=np.zeros(0, dtype=np.float32),
        node_score=np.zeros(0, dtype=np.float32),
        node_on_path=np.zeros(0, dtype=bool),
        spine_run=spine_run.astype(np.int32),
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SRC.jsonl", help="SpecDecode-Bench per-request logs")
    parser.add_argument("--proposer", required=True, choices=PROPOSERS, help="which acc_<proposer> to import")
    parser.add_argument("--out", required=True, help="trace file to write (suggested extension .trace.npz)")
    parser.add_argument("--target-model", default="unknown", help="target model name for the header")


def run(args: argparse.Namespace) -> int:
    command = shlex.join(["echo-sim", "import-specdecode", *args.sources, "--proposer", args.proposer,
                          "--out", args.out, "--target-model", args.target_model])
    trace = import_specdecode(args.sources, args.proposer, args.target_model, command)
    path = write_trace(trace, args.out)
    print(f"wrote {path}: {trace.num_requests} requests, {trace.num_positions} positions "
          f"({args.proposer}, chain-only)")
    return 0
