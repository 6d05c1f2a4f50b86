"""`echo-run trace`: a real acceptance trace (TRACES.md) from a draft/target pair.

Per group of --target-batch requests: the target decodes greedily (KV cache, stops at EOS, which
is kept as the last token, or at --max-new-tokens) giving each request's y_0 … y_{L-1}
(echo_runtime/greedy.py); then, per request, the draft, teacher-forced on prompt + y, grows every
position's lattice in one batched forward per level (echo_runtime/lattice.py). Finished
requests are kept in OUT.parts/ (echo_runtime/trace_parts.py), so an interrupted run resumes; the
trace file is written (atomically, by echo_sim.traces.format.write_trace) once all requests are done.
"""

from __future__ import annotations

import argparse
import json
import shlex
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from echo_runtime.greedy import greedy_decode
from echo_runtime.lattice import grow_request_lattices
from echo_runtime.models import DTYPES, LoadedModel, file_sha256, load_model
from echo_runtime.trace_parts import (PartStore, RequestPart, TargetOutput, TraceGenError, assemble,
                                      parts_folder)

GENERATOR_VERSION = "echo-run trace 1"


@dataclass(frozen=True)
class Prompt:
    request_id: str
    text: str  # first turn, before the chat template


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", required=True, help="target model: Hugging Face id or local folder")
    parser.add_argument("--draft", required=True, help="draft model: Hugging Face id or local folder")
    parser.add_argument("--target-gguf", help="GGUF file name inside the --target folder")
    parser.add_argument("--draft-gguf", help="GGUF file name inside the --draft folder")
    parser.add_argument("--prompts", required=True, type=Path, help="FastChat question.jsonl (first turn used)")
    parser.add_argument("--dataset", help="dataset name for the header (default: from the prompts path)")
    select = parser.add_mutually_exclusive_group()
    select.add_argument("--limit", type=int, help="only the first N prompts")
    select.add_argument("--ids", nargs="+", help="only these question ids")
    parser.add_argument("--max-new-tokens", type=int, default=128, help="greedy tokens decoded per prompt")
    parser.add_argument("--width", type=int, default=4, help="k: children per expanded node")
    parser.add_argument("--depth", type=int, default=6, help="S: lattice levels")
    parser.add_argument("--out", required=True, type=Path, help="trace file to write")
    parser.add_argument("--dtype", default="float32", choices=list(DTYPES), help="weights and activations")
    parser.add_argument("--target-batch", type=int, default=1,
                        help="prompts decoded together by the target (left-padded). 1 is exact and, with "
                             "MKL on AMD CPUs, fastest: small-batch GEMMs there are slower than B x GEMV")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--model-cache", type=Path, help="where GGUF loads are cached as safetensors "
                        "(default $ECHO_MODEL_CACHE or ~/.cache/echo_toolkit/models)")


def read_prompts(path: Path) -> list[Prompt]:
    """FastChat question.jsonl: {"question_id", "turns": [first, ...], ...} per line."""
    if not path.is_file():
        raise TraceGenError(f"{path}: prompts file not found")
    prompts, seen = [], set()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise TraceGenError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        prompt = _parse_question(line, f"{path}:{line_no}")
        if prompt.request_id in seen:
            raise TraceGenError(f"{path}:{line_no}: duplicate question_id {prompt.request_id}")
        seen.add(prompt.request_id)
        prompts.append(prompt)
    if not prompts:
        raise TraceGenError(f"{path}: no prompts")
    return prompts


def _parse_question(line: str, where: str) -> Prompt:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        raise TraceGenError(f"{where}: not JSON ({error.msg})") from None
    turns = row.get("turns") if isinstance(row, dict) else None
    if not isinstance(row, dict) or "question_id" not in row or not turns or not isinstance(turns[0], str):
        raise TraceGenError(f"{where}: needs 'question_id' and a non-empty 'turns' list of strings")
    return Prompt(str(row["question_id"]), turns[0])


def select_prompts(prompts: list[Prompt], limit: int | None, ids: list[str] | None) -> list[Prompt]:
    if limit is not None:
        if limit < 1:
            raise TraceGenError(f"--limit must be >= 1, got {limit}")
        return prompts[:limit]
    if ids:
        by_id = {p.request_id: p for p in prompts}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise TraceGenError(f"--ids: unknown question ids {', '.join(unknown)}")
        return [by_id[i] for i in ids]
    return prompts


def chat_prompt_ids(tokenizer, text: str) -> np.ndarray:
    """int32 [n0]: the first turn wrapped in the tokenizer's chat template, generation prompt added."""
    wrapped = tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                            tokenize=False, add_generation_prompt=True)
    return np.asarray(tokenizer(wrapped, add_special_tokens=False)["input_ids"], dtype=np.int32)


# End-of-text tokens a model may stop on besides its chat EOS: GGUF metadata records one EOS
# (Qwen2.5: <|im_end|> 151645), but Qwen also ends a text with <|endoftext|> 151643.
END_OF_TEXT_TOKENS = ("<|endoftext|>",)


def eos_token_ids(loaded: LoadedModel) -> list[int]:
    """Every id generation stops on: the generation config's, the tokenizer's EOS, and the
    tokenizer's end-of-text tokens (END_OF_TEXT_TOKENS) where its vocabulary has them."""
    ids = loaded.model.generation_config.eos_token_id
    ids = [] if ids is None else ([ids] if isinstance(ids, int) else list(ids))
    tokenizer = loaded.tokenizer
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    vocab = tokenizer.get_vocab()
    ids += [vocab[token] for token in END_OF_TEXT_TOKENS if token in vocab]
    return sorted(set(int(i) for i in ids))


def decode_targets(target, requests, store: PartStore, args, eos_ids) -> dict[str, TargetOutput]:
    """Target outputs of (request id, prompt ids): saved ones reused, the rest decoded as one batch."""
    outputs = {rid: store.load_target(rid) for rid, _ in requests if store.has_target(rid)}
    missing = [(rid, ids) for rid, ids in requests if rid not in outputs]
    if missing:
        start = time.perf_counter()
        decoded = greedy_decode(target, [ids for _, ids in missing], args.max_new_tokens, eos_ids)
        share = (time.perf_counter() - start) / sum(len(y) for y, _ in decoded)  # split by tokens
        for (rid, _), (y, prob) in zip(missing, decoded):
            outputs[rid] = TargetOutput(y.numpy().astype(np.int32), prob, share * len(y))
            store.save_target(rid, outputs[rid])
    return outputs


def generate_group(target, draft, requests: list[tuple[str, np.ndarray]], store: PartStore, args, eos_ids):
    """Finished parts for a group of (request id, prompt ids): one batched target decode, then
    each request's lattices. Yields parts one by one so each is saved as soon as it exists."""
    outputs = decode_targets(target, requests, store, args, eos_ids)
    for request_id, prompt_ids in requests:
        output = outputs[request_id]
        start = time.perf_counter()
        lattices = grow_request_lattices(draft, torch.from_numpy(prompt_ids.astype(np.int64)),
                                         torch.from_numpy(output.token.astype(np.int64)), args.width, args.depth)
        seconds = {"target_wall": output.seconds, "draft_wall": time.perf_counter() - start}
        yield RequestPart(request_id, prompt_ids, output.token, output.prob, lattices, seconds)


def canonical_command(args) -> str:
    """The command line that reproduces this trace (every content-relevant option spelled out)."""
    words = ["echo-run", "trace", "--target", args.target, "--draft", args.draft]
    for flag, value in (("--target-gguf", args.target_gguf), ("--draft-gguf", args.draft_gguf)):
        if value:
            words += [flag, value]
    words += ["--prompts", str(args.prompts)]
    if args.dataset:
        words += ["--dataset", args.dataset]
    if args.limit is not None:
        words += ["--limit", str(args.limit)]
    if args.ids:
        words += ["--ids", *args.ids]
    words += ["--max-new-tokens", str(args.max_new_tokens), "--width", str(args.width),
              "--depth", str(args.depth), "--dtype", args.dtype, "--target-batch", str(args.target_batch)]
    if args.threads:  # the thread count can change float summation order: part of the recipe
        words += ["--threads", str(args.threads)]
    words += ["--out", str(args.out)]
    return shlex.join(words)


def dataset_name(args) -> str:
    if args.dataset:
        return args.dataset
    return args.prompts.parent.name if args.prompts.stem == "question" else args.prompts.stem


def check_args(args) -> None:
    for name in ("max_new_tokens", "width", "depth", "target_batch"):
        if getattr(args, name) < 1:
            raise TraceGenError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads is not None and args.threads < 1:
        raise TraceGenError(f"--threads must be >= 1, got {args.threads}")


def run_params(args, target: LoadedModel, draft: LoadedModel) -> dict:
    """What decides a part's content; a resumed run must match it exactly."""
    return {"generator_version": GENERATOR_VERSION, "target_sha256": target.weight_sha256,
            "draft_sha256": draft.weight_sha256, "dtype": args.dtype, "width": args.width,
            "depth": args.depth, "max_new_tokens": args.max_new_tokens, "target_batch": args.target_batch}


def build_header(args, target: LoadedModel, draft: LoadedModel, prompts: list[Prompt], eos_ids) -> dict:
    tokenizer = target.tokenizer
    return {
        "format_version": 1, "generator": "echo-run trace", "generator_version": GENERATOR_VERSION,
        "command": canonical_command(args),
        "target_model": target.name, "draft_model": draft.name,
        "target_sha256": target.weight_sha256, "draft_sha256": draft.weight_sha256,
        "tokenizer": {"source": target.name, "vocab_size": len(tokenizer),
                      "chat_template": "first turn as a user message, generation prompt added"},
        "dataset": dataset_name(args), "prompts_file": args.prompts.name,
        "prompts_sha256": file_sha256(args.prompts), "prompt_ids": [p.request_id for p in prompts],
        "decoding": "greedy", "eos_token_ids": eos_ids, "dtype": args.dtype, "target_batch": args.target_batch,
        "threads": torch.get_num_threads(),
        "width": args.width, "depth": args.depth, "max_new_tokens": args.max_new_tokens,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "absent_columns": [],
    }


def run(args) -> int:
    check_args(args)
    prompts = select_prompts(read_prompts(args.prompts), args.limit, args.ids)
    if args.threads:
        torch.set_num_threads(args.threads)
    target = load_model(args.target, args.target_gguf, args.dtype, args.model_cache)
    draft = load_model(args.draft, args.draft_gguf, args.dtype, args.model_cache)
    if len(draft.tokenizer) != len(target.tokenizer):
        raise TraceGenError(f"draft tokenizer has {len(draft.tokenizer)} tokens, target {len(target.tokenizer)}")
    store = PartStore(parts_folder(args.out), run_params(args, target, draft))
    eos_ids = eos_token_ids(target)
    parts = generate_all(target, draft, prompts, store, args, eos_ids)
    from echo_sim.traces.format import TraceSet, write_trace

    trace = assemble(parts, build_header(args, target, draft, prompts, eos_ids), TraceSet)
    write_trace(trace, args.out)
    report(parts, args.out)
    return 0


def generate_all(target, draft, prompts, store: PartStore, args, eos_ids) -> list[RequestPart]:
    from tqdm import tqdm

    prompt_ids = {p.request_id: chat_prompt_ids(target.tokenizer, p.text) for p in prompts}
    todo = [p.request_id for p in prompts if not store.has(p.request_id)]
    tokens, wall = 0, 0.0
    bar = tqdm(total=len(todo), desc=f"trace {args.out.name} ({len(prompts) - len(todo)} done before)", unit="req")
    for first in range(0, len(todo), args.target_batch):
        group = [(rid, prompt_ids[rid]) for rid in todo[first:first + args.target_batch]]
        for part in generate_group(target.model, draft.model, group, store, args, eos_ids):
            store.save(part)
            tokens += len(part.target_token)
            wall += part.seconds["target_wall"] + part.seconds["draft_wall"]
            bar.update(1)
            bar.set_postfix(tok_s=f"{tokens / wall:.2f}", s_req=f"{wall / bar.n:.1f}")
    bar.close()
    return [store.load(p.request_id, prompt_ids[p.request_id]) for p in prompts]


def report(parts: list[RequestPart], out: Path) -> None:
    tokens = sum(len(p.target_token) for p in parts)
    target_s = sum(p.seconds["target_wall"] for p in parts)
    draft_s = sum(p.seconds["draft_wall"] for p in parts)
    print(f"wrote {out}: {len(parts)} requests, {tokens} positions; generation wall time "
          f"target {target_s:.0f} s ({tokens / max(target_s, 1e-9):.2f} tok/s), lattices {draft_s:.0f} s "
          f"({tokens / max(draft_s, 1e-9):.2f} positions/s), {(target_s + draft_s) / len(parts):.1f} s/request")
