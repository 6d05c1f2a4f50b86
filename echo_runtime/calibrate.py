"""`echo-run calibrate`: time the runtime's forwards over a grid and write a calibration file.

Measured with the engine's own code paths (so the simulator's clock prices what the runtime does):
  verify   one target `tree_forward` over bs requests × v tokens (root + v − 1 drafts) on KV
           prefixes of length kv, LM head and argmax: the engine's verify phase (building the
           trees' arrays on the host is left out: under 1 ms at bs 8, and overlappable on a GPU);
  draft    `grow_lattices` for bs requests (one pending token each) to depth S with width k: the
           engine's draft phase (level 1 over bs tokens, levels 2…S over bs·k);
  curve    bs = 1 verifies of every v in --curve-tokens (the fit interpolates between measured
           token counts: on one CPU thread a forward of 13 tokens can cost twice one of 16), each
           paired with one draft level over v pending tokens spread over min(v, max batch size)
           requests, where v <= max batch size × width (a draft extend, as level 1 runs after a
           verification: the draft model's token-count curve is as uneven);
  prefill  bs = 1 chains of P tokens on an empty prefix, target (LM head on the last token, as the
           engine's prefill) and draft;
  overhead a short live run: per decode step, the host time outside the forwards (policy select,
           acceptance walk, cache compaction, observe), fitted as step_s + per_request_s · bs.
Each grid point is the median of --repeats timed runs (taken in rounds over the grid) after
--warmup untimed ones. A point pairs
one verify shape (bs, v, kv) with one draft depth (the depths cycle over v), so no time is
measured twice. Measurements are appended to OUT.measurements.jsonl as they finish: an interrupted
run resumes where it stopped. The fit is echo_sim.cost.calibration_fit's; the file is written by
echo_sim.cost.calibration_file.write_calibration (data, fit, per-point error, hardware, versions, command).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from echo_runtime.draft_tree import grow_lattices
from echo_runtime.forward import chain_row, next_token_logits, tree_forward
from echo_runtime.kv_cache import KVCache
from echo_runtime.pair import (Pair, add_pair_arguments, check_pair_args, hardware_label, load_pair,
                               machine_fingerprint, software_versions)
from echo_runtime.timing import CLOCKS, Clock
from echo_runtime.verify import build_tree


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"needs positive integers: {text!r}")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_pair_arguments(parser)
    grid = parser.add_argument_group("grid")
    grid.add_argument("--batch-sizes", type=_ints, default=[1, 2, 4, 8], help="requests per timed forward")
    grid.add_argument("--tokens-per-request", type=_ints, default=[1, 2, 3, 4, 5, 8, 16],
                      help="v: verified tokens per request (root included)")
    grid.add_argument("--kv-lens", type=_ints, default=[128, 384], help="KV tokens per request")
    grid.add_argument("--draft-depths", type=_ints, default=[2, 4, 6], help="draft levels S timed")
    grid.add_argument("--draft-width", type=int, default=4, help="draft width k timed")
    grid.add_argument("--curve-tokens", type=_ints, default=list(range(1, 17)) + [20, 24, 28, 32, 40, 48, 56, 64, 96, 128],
                      help="verified tokens of extra bs = 1 points (at the first --kv-lens)")
    grid.add_argument("--prefill-tokens", type=_ints, default=[32, 64, 128, 256, 512],
                      help="prompt chunk sizes timed")
    grid.add_argument("--max-batch-kv-tokens", type=int,
                      help="skip batch × KV-length combinations above this many cached tokens (GPU memory)")
    grid.add_argument("--repeats", type=int, default=3, help="timed repeats per grid point (median kept)")
    grid.add_argument("--warmup", type=int, default=1, help="untimed runs before each grid point")
    parser.add_argument("--fit", default="curve", choices=("curve", "linear"),
                        help="cost model form (echo_sim.cost.calibration_fit): measured token-count curves or lines")
    parser.add_argument("--clock", default="auto", choices=CLOCKS,
                        help="auto: CUDA events on a GPU, thread CPU time on a CPU (echo_runtime.timing); wall: perf_counter")
    parser.add_argument("--overhead-steps", type=int, default=12, help="decode steps of the overhead run")
    parser.add_argument("--hardware", help="hardware name in the file (default: cpu-<cores>core or the GPU's name)")
    parser.add_argument("--out", type=Path, help="calibration file (default traces/calibration/<hardware>_<model>.json)")


@dataclass(frozen=True)
class Shape:
    kind: str  # "verify", "draft" (lattice levels), "prefill" / "draft-prefill" (a chain of `tokens`)
    batch_size: int
    tokens: int  # verify: v per request; draft: depth S
    kv: int
    width: int = 1
    extend: int = 0  # draft: level-1 tokens, spread evenly over the requests (0: one per request)

    @property
    def key(self) -> str:
        key = f"{self.kind}:{self.batch_size}:{self.tokens}:{self.kv}:{self.width}"
        return f"{key}:e{self.extend}" if self.extend else key

    def pending_counts(self) -> list[int]:
        total = self.extend or self.batch_size
        return [total // self.batch_size + (r < total % self.batch_size) for r in range(self.batch_size)]


def grid_shapes(args) -> tuple[list[tuple[Shape, Shape | None]], list[Shape]]:
    """(point pairs (verify shape, draft shape or None), every shape to measure)."""
    pairs = []
    for bs, kv in itertools.product(args.batch_sizes, args.kv_lens):
        if args.max_batch_kv_tokens and bs * kv > args.max_batch_kv_tokens:
            continue  # does not fit the device's memory: measured at smaller batches only
        for i, v in enumerate(args.tokens_per_request):
            depth = args.draft_depths[i % len(args.draft_depths)]
            pairs.append((Shape("verify", bs, v, kv), Shape("draft", bs, depth, kv, args.draft_width)))
    in_grid = {verify for verify, _ in pairs}
    largest_level = max(args.batch_sizes) * args.draft_width
    for v in args.curve_tokens:
        shape = Shape("verify", 1, v, args.kv_lens[0])
        if shape not in in_grid:
            rows = min(v, max(args.batch_sizes))
            level = Shape("draft", rows, 1, args.kv_lens[0], args.draft_width, extend=v) if v <= largest_level else None
            pairs.append((shape, level))
    pairs += [(Shape("prefill", 1, p, 0), Shape("draft-prefill", 1, p, 0)) for p in args.prefill_tokens]
    shapes = list(dict.fromkeys(s for pair in pairs for s in pair if s is not None))
    return pairs, shapes


def _chain_tree(root: int, tokens: np.ndarray):
    n = len(tokens)
    return build_tree(root, np.arange(n), tokens, np.arange(n) - 1, np.arange(1, n + 1))


def time_verify(pair: Pair, cache: KVCache, shape: Shape, rng: np.random.Generator, clock: Clock) -> float:
    """Seconds of the engine's verify phase for this shape (cache lengths restored after)."""
    cached = max(shape.kv - 1, 0)
    cache.lengths[: shape.batch_size] = cached
    vocab = pair.target.config.vocab_size
    trees = [_chain_tree(int(rng.integers(vocab)), rng.integers(0, vocab, size=shape.tokens - 1))
             for _ in range(shape.batch_size)]
    rows = [t.row(slot, cached) for slot, t in enumerate(trees)]  # host-side tree building is not timed
    watch = clock.stopwatch()
    watch.mark("start")
    hidden = tree_forward(pair.target, cache, rows, use_kernel=pair.device == "cuda")
    next_token_logits(pair.target, hidden).argmax(dim=-1).cpu()
    watch.mark("verify")
    return watch.total()


def _time_prefill(model, cache: KVCache, tokens: int, with_head: bool, rng: np.random.Generator, clock: Clock) -> float:
    """The engine's prefill of one chain of `tokens` on an empty slot (target: LM head on the last token)."""
    cache.lengths[0] = 0
    row = chain_row(0, rng.integers(0, model.config.vocab_size, size=tokens), 0)
    watch = clock.stopwatch()
    watch.mark("start")
    hidden = tree_forward(model, cache, [row])
    if with_head:
        next_token_logits(model, hidden[-1:]).argmax(dim=-1).cpu()
    watch.mark("prefill")
    return watch.total()


def time_prefill(pair: Pair, cache: KVCache, shape: Shape, rng: np.random.Generator, clock: Clock) -> float:
    return _time_prefill(pair.target, cache, shape.tokens, True, rng, clock)


def time_draft_prefill(pair: Pair, cache: KVCache, shape: Shape, rng: np.random.Generator, clock: Clock) -> float:
    return _time_prefill(pair.draft, cache, shape.tokens, False, rng, clock)


def time_draft(pair: Pair, cache: KVCache, shape: Shape, rng: np.random.Generator, clock: Clock) -> float:
    cached = max(shape.kv - 1, 0)
    cache.lengths[: shape.batch_size] = cached
    slots = np.arange(shape.batch_size)
    pending = [rng.integers(0, pair.draft.config.vocab_size, size=n) for n in shape.pending_counts()]
    watch = clock.stopwatch()
    watch.mark("start")
    grow_lattices(pair.draft, cache, slots, pending, shape.width, shape.tokens)
    watch.mark("draft")
    return watch.total()


TIMERS = {"verify": time_verify, "draft": time_draft, "prefill": time_prefill, "draft-prefill": time_draft_prefill}


class MeasurementLog:
    """Append-only JSON lines: a setup line, then one line per measured shape."""

    def __init__(self, path: Path, setup: dict) -> None:
        self.path, self.done = path, {}
        if path.is_file():
            lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            if not lines or lines[0].get("setup") != setup:
                raise ValueError(f"{path}: measured with a different setup; delete it or use another --out")
            for line in lines[1:]:  # one line per timing run (or a list of them)
                self.done.setdefault(line["key"], []).extend(line["seconds"])
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"setup": setup}) + "\n")

    def add(self, key: str, seconds: list[float]) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"key": key, "seconds": seconds}) + "\n")
        self.done.setdefault(key, []).extend(seconds)


def measure_grid(pair: Pair, args, shapes: list[Shape], log: MeasurementLog) -> None:
    """Measure every shape until it has --repeats timings, in rounds: each round times every
    unfinished shape once, so consecutive timings are of different shapes, as in a running engine
    (back-to-back repeats of one shape ran ~5 % faster than the same shape inside live runs).
    Each KV length has its own cache (slots × capacity of that group), all of them views of one
    storage per model as large as the largest group (shared_caches)."""
    todo = [s for s in shapes if len(log.done.get(s.key, [])) < args.repeats]
    if not todo:  # a resumed log that is already complete
        return
    rng = np.random.default_rng(0)
    clock = Clock(pair.device, args.clock)
    target_groups, draft_groups = {}, {}
    for kv in sorted({s.kv for s in todo}):
        group = [s for s in todo if s.kv == kv]
        slots = max(s.batch_size for s in group)
        verify_room = max([s.tokens for s in group if s.kind in ("verify", "prefill")] or [1])
        draft_room = max([args.draft_width * (max(args.draft_depths) + 1) + 2]
                         + [s.tokens for s in group if s.kind == "draft-prefill"]
                         + [max(s.pending_counts()) + args.draft_width + 2 for s in group if s.kind == "draft"])
        target_groups[kv], draft_groups[kv] = (slots, kv + verify_room), (slots, kv + draft_room)
    target_caches = shared_caches(pair.target.config, target_groups, _dtype(pair.target), pair.device)
    draft_caches = shared_caches(pair.draft.config, draft_groups, _dtype(pair.draft), pair.device)
    caches = {kv: {"verify": target_caches[kv], "prefill": target_caches[kv],
                   "draft": draft_caches[kv], "draft-prefill": draft_caches[kv]} for kv in target_groups}
    bar = tqdm(total=sum(args.repeats - len(log.done.get(s.key, [])) for s in todo), desc="calibrate", unit="run")
    warmed: set[str] = set()
    while todo:
        for shape in todo:
            timer, cache = TIMERS[shape.kind], caches[shape.kv][shape.kind]
            if shape.key not in warmed:
                for _ in range(args.warmup):
                    timer(pair, cache, shape, rng, clock)
                warmed.add(shape.key)
            log.add(shape.key, [timer(pair, cache, shape, rng, clock)])
            bar.update(1)
        todo = [s for s in todo if len(log.done[s.key]) < args.repeats]
    bar.close()


def shared_caches(config, groups: dict[int, tuple[int, int]], dtype: torch.dtype, device) -> dict[int, KVCache]:
    """{kv: cache of (slots, capacity)} for each group, all views of one K and one V storage per
    layer, as large as the largest group. The grid times one shape at a time, so groups never need
    their storage at once; separate caches would add up (the 8B grid's KV groups: ~71 GB of K/V)."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_slot_token = config.num_key_value_heads * head_dim
    numel = max(slots * capacity for slots, capacity in groups.values()) * per_slot_token
    storage = [(torch.zeros(numel, dtype=dtype, device=device), torch.zeros(numel, dtype=dtype, device=device))
               for _ in range(config.num_hidden_layers)]
    caches = {}
    for kv, (slots, capacity) in groups.items():
        shape, used = (slots, config.num_key_value_heads, capacity, head_dim), slots * capacity * per_slot_token
        caches[kv] = KVCache(keys=[k[:used].view(shape) for k, _ in storage],
                             values=[v[:used].view(shape) for _, v in storage], lengths=np.zeros(slots, dtype=np.int64))
    return caches


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def points_from(pairs, log: MeasurementLog, repeats: int) -> list[dict]:
    points = []
    median = lambda shape: float(np.median(log.done[shape.key][: repeats]))  # noqa: E731
    for verify, draft in pairs:
        bs, v, kv = verify.batch_size, verify.tokens, verify.kv
        lattice = draft if draft and draft.kind == "draft" else None
        point = {
            "batch_size": bs, "verify_tokens": bs * v, "kv_tokens": bs * kv,
            "attention_pairs": bs * v * (kv + v) if kv else v * (v + 1) // 2, "eager": True,
            "draft_depth": lattice.tokens if lattice else 0, "draft_width": lattice.width if lattice else 1,
            "verify_s": median(verify), "draft_s": median(lattice) if lattice else None,
        }
        if lattice and lattice.extend:
            point.update(draft_first_tokens=lattice.extend, draft_batch_size=lattice.batch_size)
        if verify.kind == "prefill":
            point.update(prefill=True, draft_prefill_s=median(draft))
        points.append(point)
    return points


def measure_overhead(pair: Pair, cost, steps: int, batch_sizes: tuple[int, ...], clock: str) -> tuple[float, float]:
    """(step_s, per_request_s): host time per decode step outside the forwards, from short live
    runs of `static` on synthetic prompts, least squares on the batch size (clipped at 0)."""
    from echo_runtime.engine import LiveEngine, RequestSpec, RuntimeConfig
    from echo_runtime.signals import ModelSignals
    from echo_sim.policies.registry import make_policy

    rng = np.random.default_rng(1)
    rows, seconds = [], []
    for bs in batch_sizes:
        specs = [RequestSpec(rng.integers(0, pair.target.config.vocab_size, size=32), steps) for _ in range(bs)]
        cuda = pair.device == "cuda"
        engine = LiveEngine(pair.target, pair.draft, make_policy("static"), cost, RuntimeConfig(bs, kernels=cuda, clock=clock),
                            ModelSignals(use_kernel=cuda), pair.device)
        for step in engine.run(specs).steps:
            if step.batch_size:
                rows.append([1.0, step.batch_size])
                seconds.append(step.laps.get("select_s", 0.0) + step.laps.get("commit_s", 0.0))
    coef = np.linalg.lstsq(np.array(rows), np.array(seconds), rcond=None)[0]
    if coef[1] < 0:  # no measurable growth with the batch: a constant
        return float(np.mean(seconds)), 0.0
    return float(max(coef[0], 0.0)), float(coef[1])


COMMAND_OPTIONS = ("target", "target_gguf", "draft", "draft_gguf", "random_shape", "dtype", "device", "threads",
                   "batch_sizes", "tokens_per_request", "kv_lens", "draft_depths", "draft_width", "curve_tokens",
                   "prefill_tokens", "fit",
                   "max_batch_kv_tokens",
                   "repeats", "warmup", "overhead_steps", "clock", "hardware", "model_cache")


def canonical_command(args, out: Path) -> str:
    """The command line that reproduces this file, every option spelled out."""
    words = ["echo-run", "calibrate"]
    for name in COMMAND_OPTIONS:
        value = getattr(args, name, None)
        if value is None:
            continue
        text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
        words += [f"--{name.replace('_', '-')}", text]
    return shlex.join(words + ["--out", str(out)])


def default_out(hardware: str, model: str) -> Path:
    from echo_sim.paths import TRACES_DIR

    return TRACES_DIR / "calibration" / f"{hardware}_{model}.json"


def run(args: argparse.Namespace) -> int:
    from echo_sim.cost.calibration_file import write_calibration
    from echo_sim.cost.model import load_cost_model

    from echo_sim.atomic import check_output_file

    if args.repeats < 1 or args.warmup < 0 or args.overhead_steps < 2:
        raise ValueError("--repeats must be >= 1, --warmup >= 0, --overhead-steps >= 2")
    for name in ("batch_sizes", "tokens_per_request", "kv_lens", "draft_depths", "curve_tokens", "prefill_tokens"):
        if min(getattr(args, name)) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: every value must be >= 1, got {getattr(args, name)}")
    if args.draft_width < 1 or (args.max_batch_kv_tokens is not None and args.max_batch_kv_tokens < 1):
        raise ValueError(f"--draft-width and --max-batch-kv-tokens must be >= 1, got {args.draft_width}, "
                         f"{args.max_batch_kv_tokens}")
    check_pair_args(args)
    if args.out is not None:
        check_output_file(args.out)  # before loading or measuring anything
    pair = load_pair(args)
    hardware = args.hardware or hardware_label(args.device)
    model = pair.target_label.split(" ")[0]
    out = check_output_file(args.out or default_out(hardware, model))
    pairs, shapes = grid_shapes(args)
    clock = Clock(pair.device, args.clock).kind
    setup = {"target": pair.target_label, "draft": pair.draft_label, "dtype": pair.dtype, "device": pair.device,
             "hardware": hardware, "order": "rounds", "warmup": args.warmup, "clock": clock,
             "threads": args.threads, "machine": machine_fingerprint()}  # never resume another machine's log
    log = MeasurementLog(out.with_name(out.name + ".measurements.jsonl"), setup)
    measure_grid(pair, args, shapes, log)
    fields = dict(points=points_from(pairs, log, args.repeats), hardware=hardware, model=model,
                  draft_model=pair.draft_label, dtype=pair.dtype, tp=1, software={**software_versions(), "clock": clock},
                  command=canonical_command(args, out), graph_buckets=[],
                  kv_capacity_tokens=1_000_000, prefill_chunk_tokens=8192,
                  form=args.fit, created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    partial = out.with_name(out.name + ".no-overhead.json")
    write_calibration(partial, step_overhead_s=0.0, per_request_overhead_s=0.0, **fields)
    step_s, per_request_s = measure_overhead(pair, load_cost_model(calibration=partial), args.overhead_steps,
                                             (1, max(args.batch_sizes)), args.clock)
    calibration = write_calibration(out, step_overhead_s=step_s, per_request_overhead_s=per_request_s, **fields)
    partial.unlink()
    report(calibration, out)
    return 0


def report(calibration, out: Path) -> None:
    fit = calibration.fit
    print(f"wrote {out}: {len(calibration.points)} points; verify fit {fit.verify}")
    print(f"  draft fit {fit.draft}; overhead {calibration.step_overhead_s * 1e3:.1f} ms/step "
          f"+ {calibration.per_request_overhead_s * 1e3:.2f} ms/request")
    data = json.loads(out.read_text())["fit"]
    print(f"  verify rel. error rms {data['verify_rms_rel_err']:.1%}, max {data['verify_max_abs_rel_err']:.1%}; "
          f"draft rms {data['draft_rms_rel_err'] or 0:.1%}, max {data['draft_max_abs_rel_err'] or 0:.1%}")
