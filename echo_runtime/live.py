"""`echo-run live`: serve prompts with real speculative decoding and report `echo-sim run`'s metrics.

    echo-run live --policy echo --concurrency 4 --prompts question.jsonl [--max-new-tokens 64] [--json]

Closed loop: C clients, each sends its next prompt when its previous one finishes. Times are
measured (perf_counter on CPU, CUDA events on GPU) and go through echo_sim.metrics, so every
number has the simulator's definition. Timing-only mode: `--random-shape NAME --trace FILE` runs
random weights of a real shape with the trace's acceptance (the simulator's workload stream maps
requests onto trace requests). `oracle` and `speedup_vs_ar` need the target's future: they are
simulator-only (speedup: run `ar` live as well and divide).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from echo_runtime.engine import LiveEngine, RequestSpec, RunRecord, RuntimeConfig
from echo_runtime.pair import Pair, add_pair_arguments, hardware_label, load_pair
from echo_runtime.signals import ModelSignals, TraceSignals
from echo_runtime.timing import CLOCKS, Clock
from echo_sim.cli.run import json_safe
from echo_sim.metrics import RequestLog, compute_metrics
from echo_sim.step import policy_drafts, step_frame

SUMMARY = (("output tokens/s", "output_tokens_per_s", "{:.3f}"), ("mean accepted tokens", "mean_accepted_tokens", "{:.3f}"),
           ("verified tokens/step", "verified_tokens_per_step", "{:.1f}"), ("waste", "waste", "{:.1%}"),
           ("draft time share", "draft_time_share", "{:.1%}"), ("TTFT p50", "ttft_p50", "{:.3f} s"),
           ("TPOT p50", "tpot_p50", "{:.4f} s"), ("TPOT p99", "tpot_p99", "{:.4f} s"), ("steps", "steps", "{}"),
           ("measured", "simulated_seconds", "{:.1f} s"), ("cost source (policies)", "cost_source", "{}"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pair_arguments(parser)
    parser.add_argument("--policy", default="echo", help="policy spec, e.g. echo, static:S=5,k=4,N=16")
    parser.add_argument("--concurrency", type=int, required=True, help="closed-loop clients")
    parser.add_argument("--prompts", type=Path, help="FastChat question.jsonl (first turn, chat template)")
    parser.add_argument("--limit", type=int, help="only the first N prompts")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per prompt at most")
    parser.add_argument("--width", type=int, default=4, help="k: widest lattice the drafter grows")
    parser.add_argument("--depth", type=int, default=6, help="S: deepest lattice the drafter grows")
    parser.add_argument("--calibration", help="cost model the policies use (default: "
                        "traces/calibration/<hardware>_<model>.json when it exists, else the preset)")
    parser.add_argument("--hardware", default="h200", help="cost preset without a calibration file")
    parser.add_argument("--model", default="qwen2.5-coder-1.5b", help="cost preset without a calibration file")
    parser.add_argument("--trace", type=Path, help="with --random-shape: acceptance replayed from this trace")
    parser.add_argument("--requests", type=int, help="with --trace: requests to serve (default: the trace's)")
    parser.add_argument("--seed", type=int, default=0, help="with --trace: the workload stream's seed")
    parser.add_argument("--clock", default="auto", choices=CLOCKS,
                        help="auto: CUDA events on a GPU, thread CPU time on a CPU (echo_runtime.timing); wall: perf_counter")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def record_frames(record: RunRecord) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run as echo_sim.metrics' RequestLog and StepLog frames."""
    requests = record.requests
    log = RequestLog(np.array([len(q.prompt) for q in requests]), np.array([len(q.output) for q in requests]),
                     np.array([q.index for q in requests]))
    for name, attr in (("arrival", "arrival"), ("admitted", "admitted_time"), ("first_token", "first_token_time"),
                       ("finish", "finish_time"), ("decode_steps", "steps"), ("accepted_draft", "accepted_draft"),
                       ("verified_draft", "verified_draft")):
        getattr(log, name)[:] = [getattr(q, attr) for q in requests]
    log.decode_tokens[:] = [len(q.output) - 1 for q in requests]
    return log.frame(), step_frame(record.steps)


def predicted_components(steps: pd.DataFrame, cost, drafts: bool, draft_levels: list[tuple] | None = None
                         ) -> pd.DataFrame:
    """The cost model's prefill/draft/verify/overhead seconds for every measured step's shape.

    What the simulator would charge for exactly the steps the runtime took (same batch, V, KV,
    draft shape, prefill chunk; `drafts`: the policy runs a draft model, which prefills too; the
    draft by the tokens each level's forward really ran, `draft_levels`, when given, as the
    simulator charges ragged drafts): its gap to the measured laps is the cost model's own error."""
    from echo_sim.cost.model import StepShape

    rows = []
    for index, step in enumerate(steps.itertuples()):
        decode = step.batch_size > 0
        shape = StepShape(batch_size=int(step.batch_size), verify_tokens=int(step.verify_tokens),
                          kv_tokens=int(step.kv_tokens) if decode else 0, attention_pairs=int(step.attention_pairs),
                          draft_depth=int(step.draft_depth), draft_width=int(step.draft_width),
                          prefill_tokens=int(step.prefill_tokens), eager=bool(step.eager), prefill_draft=drafts)
        parts = cost.components(shape)
        if decode and draft_levels and draft_levels[index]:
            parts["draft"] = cost.ragged_draft_time(shape.batch_size, draft_levels[index], shape.kv_tokens)
        rows.append(parts)
    return pd.DataFrame.from_records(rows).add_prefix("predicted_").set_index(steps.index)


def live_metrics(record: RunRecord, identity: dict) -> dict:
    requests, steps = record_frames(record)
    metrics = {**identity, **compute_metrics(requests, steps, record.concurrency)}
    # the oracle needs the target's future; the live run does not know it
    metrics.update(oracle_accepted_depth=float("nan"), oracle_gap_per_step=float("nan"), speedup_vs_ar=float("nan"))
    return metrics


def policy_cost(args, pair: Pair):
    """The cost model the policies consult (echo's goodput budget, graph buckets)."""
    from echo_sim.cost.model import load_cost_model

    calibration = args.calibration
    if calibration is None:
        from echo_runtime.calibrate import default_out

        candidate = default_out(hardware_label(pair.device), pair.target_label.split(" ")[0])
        calibration = str(candidate) if candidate.is_file() else None
    if calibration is not None:
        return load_cost_model(calibration=calibration)
    return load_cost_model(args.hardware, args.model)


def prompt_specs(args, pair: Pair) -> list[RequestSpec]:
    from echo_runtime.trace_gen import chat_prompt_ids, read_prompts, select_prompts

    if args.prompts is None:
        raise ValueError("--prompts FILE is needed (or --random-shape with --trace)")
    prompts = select_prompts(read_prompts(args.prompts), args.limit, None)
    return [RequestSpec(chat_prompt_ids(pair.tokenizer, p.text).astype(np.int64), args.max_new_tokens)
            for p in prompts]


def trace_workload(trace, requests: int, seed: int, vocab_size: int):
    """(specs, trace_request): the simulator's stream for this trace (workload "trace"), prompts of
    the trace's lengths (synthetic ids, folded into the vocabulary: echo_runtime.vocab)."""
    from echo_runtime.vocab import fold_token_ids
    from echo_sim.workload import build_stream

    stream = build_stream("trace", requests, seed, trace.prompt_len, trace.output_len, "closed", None)
    specs = [RequestSpec(fold_token_ids(np.arange(int(p)), vocab_size), int(n))
             for p, n in zip(stream.prompt_len, stream.output_len)]
    return specs, stream.trace_request


def serve(pair: Pair, policy_spec: str, concurrency: int, specs: list[RequestSpec], cost, signals,
          width: int, depth: int, identity: dict, progress=None, outputs: list | None = None,
          clock: str = "auto", steps_out: list | None = None) -> dict:
    """Run the closed loop once; the metrics dict (echo-sim run's fields, measured). `outputs`, if
    given, receives each request's output tokens (in request order); `steps_out` the step table
    with the measured laps and the cost model's predicted components (predicted_components)."""
    from echo_sim.policies.registry import make_policy

    if concurrency < 1:
        raise ValueError(f"--concurrency must be >= 1, got {concurrency}")
    policy = make_policy(policy_spec)
    drafts = policy_drafts(policy)  # before the run adapts the policy's shape
    config = RuntimeConfig(concurrency, width, depth, eos_token_ids=pair.eos_token_ids,
                           kernels=pair.device == "cuda", clock=clock)
    record = LiveEngine(pair.target, pair.draft, policy, cost, config, signals, pair.device).run(specs, progress)
    if outputs is not None:
        outputs.extend(q.output for q in record.requests)
    identity = {"policy": policy.label, "concurrency": concurrency,
                "requests": len(specs), **identity, "cost_source": str(cost.source),
                "clock": Clock(pair.device, clock).kind}
    metrics = live_metrics(record, identity)
    metrics["wall_seconds"] = float(sum(step.laps["wall_s"] for step in record.steps))
    if steps_out is not None:
        _, steps = record_frames(record)
        levels = [step.draft_levels for step in record.steps]
        steps["draft_levels"] = ["+".join(map(str, tokens)) for tokens in levels]  # ragged under echo's gate
        steps_out.append(pd.concat([steps, predicted_components(steps, cost, drafts, levels)], axis=1))
    return metrics


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from echo_sim.policies.registry import make_policy

    make_policy(args.policy)  # an unknown policy or knob fails before any model is loaded
    for name in ("concurrency", "requests", "limit", "max_new_tokens"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.trace is not None and not args.random_shape:
        raise ValueError("--trace replays acceptance for timing-only runs: use it with --random-shape")
    if args.random_shape and args.trace is None:
        raise ValueError("--random-shape has random weights: give --trace FILE for the acceptance")
    pair = load_pair(args)
    cost = policy_cost(args, pair)
    if args.random_shape:
        from echo_sim.traces.format import read_trace

        trace = read_trace(args.trace)
        vocab = pair.target.config.vocab_size
        specs, mapping = trace_workload(trace, args.requests or trace.num_requests, args.seed, vocab)
        signals, source = TraceSignals(trace, mapping, vocab), f"trace:{args.trace}"
        width, depth = trace.width, trace.depth
    else:
        specs, signals = prompt_specs(args, pair), ModelSignals(use_kernel=args.device == "cuda")
        source, width, depth = f"live:{pair.target_label}<-{pair.draft_label}", args.width, args.depth
    identity = {"arrival": "closed", "workload": str(args.prompts or args.trace), "hardware": hardware_label(args.device),
                "model": pair.target_label, "acceptance_source": source, "torch_threads": args.threads}
    bar = tqdm(total=len(specs), desc=f"live {args.policy} C={args.concurrency}", unit="req")
    try:
        metrics = serve(pair, args.policy, args.concurrency, specs, cost, signals, width, depth, identity,
                        progress=lambda done: bar.update(done - bar.n), clock=args.clock)
    finally:
        bar.close()  # an error message then starts on a line of its own
    print(json.dumps(json_safe(metrics)) if args.json else format_summary(metrics))
    return 0


def format_summary(metrics: dict) -> str:
    lines = [f"{metrics['policy']} live: {metrics['requests']} requests, concurrency {metrics['concurrency']}, "
             f"{metrics['hardware']} / {metrics['model']}"]
    for label, key, pattern in SUMMARY:
        value = metrics.get(key)
        ok = value is not None and not (isinstance(value, float) and math.isnan(value))
        lines.append(f"  {label:<24} {pattern.format(value) if ok else 'n/a'}")
    return "\n".join(lines)
