"""`echo-run validate`: the same workload simulated and served live; the simulator's error in %.

    echo-run validate --device cpu [--policies ar,static,echo] [--concurrency 1,2,4,8] [--json]

1. A trace of the prompts (default: the first 8 MT-Bench questions × 64 new tokens) is generated
   with `echo-run trace` (same pair, k, S; resumable), unless --trace names one.
2. For every policy × concurrency: `echo_sim.engine.simulate` on that trace with the calibration
   file's cost model (default: this machine's file under traces/calibration/), and `echo-run live`
   on the same prompts in the order the simulator's workload stream sends them, with the same
   calibration for the policies' cost model.
3. Row: simulated vs measured output tokens/s, mean accepted tokens (MAT) and TPOT p50, error =
   (simulated − measured) ÷ measured in %, and whether every live output equals the trace's
   greedy tokens; the machine's speed before and after the live run against its calibration
   (echo_runtime.drift: a few grid points re-timed) and the throughput error at that speed. Rows are written to OUT/rows/ as they finish (an interrupted run resumes), the
   table to OUT/validation.json and OUT/validation.md.

Timing-only (a GPU without the real pair's weights): `--random-shape NAME --trace FILE
[--requests-per-client N]` serves random weights of that shape with the trace's acceptance, as
`echo-run live --random-shape` does (token ids folded into the shape's vocabulary:
echo_runtime.vocab). The forwards and kernels are real, so the throughput and TPOT errors measure
the cost model; MAT and outputs equal the trace's by construction.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import numpy as np

from echo_runtime.drift import speed_ratio
from echo_runtime.engine import RequestSpec
from echo_runtime.live import json_safe, policy_cost, serve
from echo_runtime.pair import Pair, add_pair_arguments, check_pair_args, hardware_label, load_pair
from echo_runtime.signals import ModelSignals
from echo_runtime.timing import CLOCKS, Clock
from echo_sim.atomic import prepare_folder, write_text_atomic
from echo_sim.paths import TRACES_DIR

COMPARED = (("throughput", "output_tokens_per_s"), ("mat", "mean_accepted_tokens"), ("tpot", "tpot_p50"))


def _csv(kind):
    def parse(text: str):
        try:
            values = [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a comma-separated list: {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pair_arguments(parser)
    parser.add_argument("--prompts", type=Path, default=TRACES_DIR / "prompts" / "mt_bench_question.jsonl",
                        help="FastChat question.jsonl (the shipped MT-Bench questions by default)")
    parser.add_argument("--limit", type=int, default=8, help="first N prompts (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per prompt at most")
    parser.add_argument("--width", type=int, default=4, help="k: widest lattice of the trace and the drafter")
    parser.add_argument("--depth", type=int, default=6, help="S: deepest lattice of the trace and the drafter")
    parser.add_argument("--policies", type=_csv(str), default=["ar", "static", "echo"], help="comma-separated policy specs")
    parser.add_argument("--concurrency", type=_csv(int), default=[1, 2, 4, 8], help="comma-separated client counts")
    parser.add_argument("--calibration", help="calibration file (default traces/calibration/<hardware>_<model>.json)")
    parser.add_argument("--trace", type=Path, help="an existing trace of exactly these prompts (default: generate); "
                        "with --random-shape: the acceptance to replay")
    parser.add_argument("--requests-per-client", type=int,
                        help="with --random-shape: serve N × concurrency requests (default: the trace's count)")
    parser.add_argument("--out", type=Path, default=Path("validate-out"),
                        help="results folder; rows already there are reused (resume) (default: %(default)s; "
                             "the committed CPU result is benchmarks/results/validate_cpu)")
    parser.add_argument("--clock", default="auto", choices=CLOCKS,
                        help="must be the calibration's clock (auto: thread CPU time on a CPU, CUDA events on a GPU)")
    parser.add_argument("--json", action="store_true", help='print {"rows": [...]}')


def trace_for(args, out: Path) -> Path:
    """The trace of the validation prompts: --trace, or generated (resumably) into OUT."""
    if args.trace is not None:
        return args.trace
    path = out / "validation.trace.npz"
    if path.is_file():
        return path
    from echo_runtime.cli import main as echo_run

    argv = ["trace", "--target", args.target, "--draft", args.draft or args.target, "--prompts", str(args.prompts),
            "--limit", str(args.limit), "--max-new-tokens", str(args.max_new_tokens), "--width", str(args.width),
            "--depth", str(args.depth), "--dtype", args.dtype or "float32", "--out", str(path)]
    argv += ["--target-gguf", args.target_gguf] if args.target_gguf else []
    argv += ["--draft-gguf", args.draft_gguf] if args.draft_gguf else []
    argv += ["--model-cache", str(args.model_cache)] if args.model_cache else []
    argv += ["--threads", str(args.threads)] if args.threads else []
    if echo_run(argv) != 0:
        raise ValueError(f"trace generation failed: echo-run {' '.join(argv)}")
    return path


def check_trace(trace, args) -> None:
    header = trace.header
    checked = (("width", args.width), ("depth", args.depth)) + (() if args.random_shape else
                                                               (("max_new_tokens", args.max_new_tokens),))
    for key, want in checked:
        if int(header.get(key, -1)) != want:
            raise ValueError(f"{trace.path}: header {key}={header.get(key)} but validation uses {want}")


def workload(trace, pair: Pair, args, concurrency: int, seed: int = 0):
    """(specs in the simulator's send order, the trace's target tokens of each)."""
    from echo_runtime.trace_gen import read_prompts
    from echo_sim.workload import build_stream

    texts = {p.request_id: p.text for p in read_prompts(args.prompts)}
    stream = build_stream("trace", trace.num_requests, seed, trace.prompt_len, trace.output_len, "closed", None)
    specs, expected = [], []
    for r in stream.trace_request:
        specs.append(RequestSpec(trace_prompt_ids(trace, pair.tokenizer, texts, r), args.max_new_tokens))
        start = trace.position_offsets[r]
        expected.append(trace.target_token[start: start + trace.output_len[r]].tolist())
    return specs, expected


def replay_workload(trace, pair: Pair, requests: int, seed: int = 0):
    """Timing-only: (specs, signals, the trace's target tokens of each request, folded)."""
    from echo_runtime.live import trace_workload
    from echo_runtime.signals import TraceSignals
    from echo_runtime.vocab import fold_token_ids

    vocab = pair.target.config.vocab_size
    specs, mapping = trace_workload(trace, requests, seed, vocab)
    expected = [fold_token_ids(trace.target_token[trace.position_offsets[r]:
                                                  trace.position_offsets[r] + trace.output_len[r]], vocab).tolist()
                for r in mapping]
    return specs, TraceSignals(trace, mapping, vocab), expected


def request_count(trace, args, concurrency: int) -> int:
    return args.requests_per_client * concurrency if args.requests_per_client else trace.num_requests


def trace_prompt_ids(trace, tokenizer, texts: dict[str, str], r: int) -> np.ndarray:
    """Request r's prompt as the trace generator tokenized it; an error if the lengths disagree."""
    from echo_runtime.trace_gen import chat_prompt_ids

    ids = chat_prompt_ids(tokenizer, texts[trace.request_ids[r]]).astype(np.int64)
    if len(ids) != trace.prompt_len[r]:
        raise ValueError(f"{trace.path}: request {trace.request_ids[r]} has prompt length {trace.prompt_len[r]}, "
                         f"the tokenizer gives {len(ids)}: not a trace of these prompts")
    return ids


def error_pct(simulated: float, measured: float) -> float:
    return float((simulated - measured) / measured * 100.0) if measured else float("nan")


def validation_row(policy: str, concurrency: int, simulated: dict, measured: dict, outputs_match: bool,
                   request_steps: int = 0) -> dict:
    """One table row. `request_steps`: the simulation's Σ decode steps over requests, to turn its
    inexact-read shares back into counts: a narrower draft (k' < k) read from the trace's k-wide
    lattice is inexact where the stored lattice never expanded a k'-frontier node; only there (an
    on-path cut: the target's path runs into such a node) can the simulated MAT differ from live."""
    row = {"policy": policy, "concurrency": concurrency, "outputs_match_trace": outputs_match}
    for short, key in COMPARED:
        row[f"{short}_simulated"], row[f"{short}_measured"] = simulated[key], measured[key]
        row[f"{short}_error_pct"] = error_pct(simulated[key], measured[key])
    for share in ("inexact_read_share", "on_path_cut_share"):
        row[share.replace("share", "count")] = int(round(simulated.get(share, 0.0) * request_steps))
    row["steps_simulated"], row["steps_measured"] = simulated["steps"], measured["steps"]
    row["clock"], row["wall_seconds_measured"] = measured["clock"], measured["wall_seconds"]
    row["seconds_simulated"], row["seconds_measured"] = simulated["simulated_seconds"], measured["simulated_seconds"]
    row["steady_state"] = bool(measured["steady_state"])
    return row


def run_point(pair: Pair, args, trace, trace_path: Path, calibration: str, cost, policy: str, concurrency: int):
    """(table row, live step table) of one policy × concurrency."""
    from echo_sim.cost.calibration_file import load_calibration
    from echo_sim.config import SimConfig
    from echo_sim.engine import simulate

    file = load_calibration(calibration)
    clock = Clock(pair.device, args.clock).kind
    if file.software.get("clock", clock) != clock:
        raise ValueError(f"{calibration} was measured with the {file.software['clock']} clock, this run uses {clock}")
    requests = request_count(trace, args, concurrency)
    config = SimConfig(policy=policy, concurrency=concurrency, requests=requests, trace=str(trace_path),
                       workload="trace", calibration=calibration, hardware=file.hardware, model=file.model, seed=0)
    result = simulate(config, trace)
    simulated, request_steps = result.metrics, int(result.requests["decode_steps"].sum())
    if pair.random_weights:
        specs, signals, expected = replay_workload(trace, pair, requests)
        source, workload_name = f"trace:{trace_path}", str(trace_path)
    else:
        (specs, expected), signals = workload(trace, pair, args, concurrency), ModelSignals(pair.device == "cuda")
        source, workload_name = "live", str(args.prompts)
    outputs, steps = [], []
    identity = {"hardware": hardware_label(pair.device), "model": pair.target_label,
                "acceptance_source": source, "workload": workload_name}
    before = speed_ratio(pair, file, clock)
    measured = serve(pair, policy, concurrency, specs, cost, signals, args.width, args.depth, identity,
                     outputs=outputs, clock=args.clock, steps_out=steps)
    after = speed_ratio(pair, file, clock)
    row = validation_row(policy, concurrency, simulated, measured, outputs == expected, request_steps)
    row.update(cost_model_errors(steps[0]), **drift_fields(row, before, after))
    return row, steps[0]


def drift_fields(row: dict, before: float | None, after: float | None) -> dict:
    """The machine's speed around the live row (echo_runtime.drift: seconds now / in the calibration,
    re-timed before and after) and the throughput error with the simulation's clock scaled by their
    mean: the part of the error the machine's drift does not explain."""
    if before is None or after is None:
        return {"speed_ratio_before": before, "speed_ratio_after": after, "throughput_error_at_probe_speed_pct": None}
    ratio = (before + after) / 2
    return {"speed_ratio_before": before, "speed_ratio_after": after,
            "throughput_error_at_probe_speed_pct": error_pct(row["throughput_simulated"] / ratio,
                                                             row["throughput_measured"])}


# measured laps (engine Stopwatch) against the cost model's components for the same step shapes
COMPONENTS = (("prefill", ("prefill_s",)), ("draft", ("draft_s",)), ("verify", ("verify_s",)),
              ("overhead", ("select_s", "commit_s")))


def cost_model_errors(steps) -> dict:
    """Σ predicted vs Σ measured seconds over the live run's own steps, per component and in total
    (in %): how much of the throughput error is the step-time model's, step shapes held fixed."""
    out, predicted_total, measured_total = {}, 0.0, 0.0
    for name, laps in COMPONENTS:
        predicted, measured = float(steps[f"predicted_{name}"].sum()), float(sum(steps[lap].sum() for lap in laps))
        out[f"{name}_seconds_measured"], out[f"{name}_seconds_predicted"] = measured, predicted
        predicted_total, measured_total = predicted_total + predicted, measured_total + measured
    out["step_time_model_error_pct"] = error_pct(predicted_total, measured_total)
    return out


def canonical_command(args) -> str:
    import shlex

    words = ["echo-run", "validate", "--device", args.device, "--target", args.target, "--prompts", str(args.prompts),
             "--limit", str(args.limit), "--max-new-tokens", str(args.max_new_tokens), "--width", str(args.width),
             "--depth", str(args.depth), "--policies", ",".join(args.policies),
             "--concurrency", ",".join(map(str, args.concurrency)), "--calibration", args.calibration,
             "--clock", args.clock, "--threads", str(args.threads), "--out", str(args.out)]
    for flag, value in (("--draft", args.draft), ("--target-gguf", args.target_gguf), ("--draft-gguf", args.draft_gguf),
                        ("--trace", args.trace), ("--model-cache", args.model_cache), ("--dtype", args.dtype),
                        ("--random-shape", args.random_shape), ("--requests-per-client", args.requests_per_client)):
        if value:
            words += [flag, str(value)]
    return shlex.join(words)


def row_path(out: Path, policy: str, concurrency: int) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in policy)
    return out / "rows" / f"{safe}_c{concurrency}.json"


def format_table(rows: list[dict]) -> str:
    head = ("| policy | C | tok/s sim | tok/s live | err % | MAT sim | MAT live | err % | TPOT p50 sim (s) "
            "| TPOT p50 live (s) | err % | step-time model err % | greedy = trace | inexact reads (on-path cuts) "
            "| machine now/cal (before, after) | tok/s err % at that speed |")
    lines = [head, "|" + "---|" * 16]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['concurrency']} | {r['throughput_simulated']:.3f} | {r['throughput_measured']:.3f} "
            f"| {r['throughput_error_pct']:+.1f} | {r['mat_simulated']:.3f} | {r['mat_measured']:.3f} "
            f"| {r['mat_error_pct']:+.1f} | {r['tpot_simulated']:.3f} | {r['tpot_measured']:.3f} "
            f"| {r['tpot_error_pct']:+.1f} | {r.get('step_time_model_error_pct', float('nan')):+.1f} "
            f"| {'yes' if r['outputs_match_trace'] else 'NO'} "
            f"| {r.get('inexact_read_count', '—')} ({r.get('on_path_cut_count', '—')}) "
            f"| {_ratio(r.get('speed_ratio_before'))}, {_ratio(r.get('speed_ratio_after'))} "
            f"| {_pct(r.get('throughput_error_at_probe_speed_pct'))} |")
    return "\n".join(lines)


def _ratio(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _pct(value) -> str:
    return "—" if value is None else f"{value:+.1f}"


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from echo_sim.policies.registry import make_policy
    from echo_sim.traces.format import read_trace

    for spec in args.policies:
        make_policy(spec)  # unknown names fail before any work
    if min(args.concurrency) < 1:
        raise ValueError(f"--concurrency values must be >= 1, got {args.concurrency}")
    if args.random_shape and args.trace is None:
        raise ValueError("--random-shape has random weights: give --trace FILE for the acceptance (timing-only)")
    if args.requests_per_client is not None and (not args.random_shape or args.requests_per_client < 1):
        raise ValueError("--requests-per-client N (N >= 1) goes with --random-shape")
    require_simulator()
    # Everything checkable is checked before OUT is created (bad input writes nothing).
    for name in ("limit", "max_new_tokens", "width", "depth"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    check_pair_args(args)
    if not args.random_shape and not args.prompts.is_file():
        raise FileNotFoundError(f"--prompts {args.prompts}: no such file")
    args.calibration = args.calibration or str(_default_calibration(args))
    check_calibration_machine(args.calibration)
    if args.trace is not None and not args.random_shape:  # a replayed trace's shape is checked after reading
        check_trace(read_trace(args.trace), args)
    prepare_folder(args.out)
    points = [(p, c) for p in args.policies for c in args.concurrency]
    done = sum(row_path(args.out, p, c).is_file() for p, c in points)
    if done:
        print(f"resuming: {done} of {len(points)} rows already measured in {args.out} "
              "(delete them or choose another --out to measure again)", file=sys.stderr)
    trace_path = trace_for(args, args.out)  # before loading the pair: one copy of the models at a time
    gc.collect()
    trace = read_trace(trace_path)
    if args.random_shape:  # the replayed lattices' shape, as echo-run live --random-shape
        args.width, args.depth = trace.width, trace.depth
    check_trace(trace, args)
    pair = load_pair(args)
    cost = policy_cost(args, pair)
    rows = []
    for policy, concurrency in tqdm(points, desc="validate", unit="point"):
        path = row_path(args.out, policy, concurrency)
        if not path.is_file():
            row, steps = run_point(pair, args, trace, trace_path, args.calibration, cost, policy, concurrency)
            write_text_atomic(path.with_suffix(".steps.csv"), steps.drop(columns=["rows"], errors="ignore")
                              .to_csv(index=False))
            write_text_atomic(path, json.dumps(json_safe(row), indent=1) + "\n")
        rows.append(json.loads(path.read_text()))
    summary = {"rows": rows, "command": canonical_command(args), "trace": str(trace_path), "calibration": args.calibration,
               "hardware": hardware_label(pair.device), "target": pair.target_label, "draft": pair.draft_label,
               "torch_threads": args.threads}
    write_text_atomic(args.out / "validation.json", json.dumps(summary, indent=1) + "\n")
    write_text_atomic(args.out / "validation.md", format_table(rows) + "\n")
    print(json.dumps({"rows": rows}) if args.json else format_table(rows))
    return 0


def require_simulator() -> None:
    """Fail before any model is loaded when the simulator's one extra dependency is missing (the
    GPU image has no simpy: benchmarks/gpu_check.sh installs it from wheels, docs/GPU.md)."""
    import importlib.util

    if importlib.util.find_spec("simpy") is None:
        raise ValueError("echo-run validate simulates with echo_sim, which needs simpy: pip install simpy "
                         "(offline: the wheel from benchmarks/fetch_wheels.sh, docs/GPU.md)")


def _default_calibration(args) -> Path:
    from echo_runtime.calibrate import default_out
    from echo_runtime.pair import pair_labels

    path = default_out(hardware_label(args.device), pair_labels(args)[0].split(" ")[0])
    if not path.is_file():
        raise ValueError(f"no calibration file {path}: run `echo-run calibrate` first or pass --calibration")
    return path


def check_calibration_machine(calibration: str) -> None:
    """A calibration holds for the machine that measured it: say so when this is another one."""
    from echo_runtime.pair import fingerprint_mismatch
    from echo_sim.cost.calibration_file import load_calibration

    mismatch = fingerprint_mismatch(load_calibration(calibration).software)
    if mismatch:
        print(f"warning: {calibration} may not describe this machine: {mismatch}. Simulated times hold for "
              "the machine that was calibrated; run `echo-run calibrate` here first for a fair comparison",
              file=sys.stderr)
