"""GPU benchmark of the verification kernels against torch SDPA with a dense mask (the runtime's fallback).

    python benchmarks/kernels.py --out DIR                 # one CUDA GPU, about a minute
    python benchmarks/kernels.py --dry-run --out DIR       # tiny shapes: CPU under the interpreter, or the GPU

Order: (1) the machine's ceilings: device copy bandwidth (read + write) and the bf16 matrix rate on
random data; (2) tree_attention on Llama-3.1-8B heads (32 query, 8 KV, d = 128, bf16), 16 tree
tokens per request, batch 1 … 256, each request's context drawn from 1 … 16k, in the runtime's
cache layout ([slots, kv_heads, capacity, head_dim], passed as a permuted view with one page per
slot, requests in shuffled slots): the default per-request split plan and forced uniform splits,
against SDPA with a dense boolean mask over the same cache window (what echo_runtime.forward does
without the kernel), as TB/s and % of the measured copy bandwidth; (3) tree_verify (greedy,
sampling) and select at batch 256.

Timing: CUDA-graph replay (no Python launch cost) of calls rotating over enough input copies to
exceed 4x the L2 cache, median of 5 timed batches of replays. Correctness is asserted, not only
recorded: tree_attention vs SDPA (relative error, bf16 bound below), greedy walk vs its reference,
select vs the numpy policy; any failure exits 1 after the results are written.

Targets (issue 11): tree_attention >= 70 % of the copy bandwidth on memory-bound shapes and >= 1.5x
SDPA-with-mask; tree_verify and select under 20 us at batch 256. Results: <out>/kernels_<gpu>.json
and .md, rewritten after every row (an interrupted run keeps what it measured).

--dry-run runs the same code on tiny shapes on the kernel device: CPU tensors under the Triton
interpreter where there is no CUDA (TRITON_INTERPRET=1 is then set unless given), compiled on a GPU
otherwise. Its numbers are meaningless; its checks are the real ones.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the kernels
# package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

LLAMA_HEADS = dict(num_heads=32, num_kv_heads=8, head_dim=128)
GPU_BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GPU_CONTEXT = (1, 16384)
TREE_TOKENS = 16
FORCED_SPLITS = (1, 8)
DRY_HEADS = dict(num_heads=4, num_kv_heads=2, head_dim=64)
DRY_BATCHES = (2,)
DRY_CONTEXT = (1, 40)
MEMORY_BOUND_BYTES = 64e6
REL_ERR_LIMIT = {"bfloat16": 2e-2, "float32": 1e-4}   # ‖ours − SDPA‖ / ‖SDPA‖ (METHOD.md: bf16 1e-3 … 1e-2)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="results folder")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the kernel device (module docstring)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class Bench:
    """Timing, ceilings and the report of one run."""

    def __init__(self, args, argv):
        import torch
        from kernels.testing import kernel_device
        self.torch, self.args, self.start = torch, args, time.perf_counter()
        self.device = kernel_device()
        self.cuda = self.device.type == "cuda"
        self.dtype = torch.bfloat16 if self.cuda else torch.float32    # the interpreter's bf16 dot is wrong
        self.gen = torch.Generator().manual_seed(args.seed)                 # structure (CPU)
        self.data_gen = torch.Generator(device=self.device).manual_seed(args.seed)
        name = torch.cuda.get_device_name(0) if self.cuda else "cpu-interpreter"
        label = ("dry-run-" if args.dry_run else "") + name
        self.path = args.out / f"kernels_{re.sub(r'[^a-z0-9]+', '-', label.lower()).strip('-')}"
        self.report = {"command": " ".join(["python", "benchmarks/kernels.py", *argv]),
                       "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "dry_run": args.dry_run, "machine": self._machine(name), "versions": self._versions(),
                       "ceilings": {}, "tree_attention": [], "tree_verify": [], "select": [], "failures": []}

    def _machine(self, name):
        info = {"device": name, "host": platform.node(), "cpu": platform.processor() or platform.machine()}
        if self.cuda:
            props = self.torch.cuda.get_device_properties(0)
            info.update(sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1),
                        l2_bytes=getattr(props, "L2_cache_size", None))
        return info

    def _versions(self):
        import numpy
        import triton
        return {"python": platform.python_version(), "torch": self.torch.__version__, "triton": triton.__version__,
                "numpy": numpy.__version__, "cuda": self.torch.version.cuda,
                "triton_interpret": os.environ.get("TRITON_INTERPRET", "0")}

    def l2_bytes(self) -> int:
        return self.report["machine"].get("l2_bytes") or 60 * 2**20

    def time_ms(self, calls) -> float:
        """Milliseconds per call of `calls` (a list of zero-argument launches over different inputs).

        CUDA: every call once outside the graph (autotuning, allocations), one graph of them all,
        replayed; median over 5 batches of replays. CPU (the interpreter compiles nothing): one eager pass."""
        torch = self.torch
        if not self.cuda:
            begin = time.perf_counter()
            for call in calls:
                call()
            return (time.perf_counter() - begin) * 1e3 / len(calls)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for call in calls:
                call()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for call in calls:
                call()
        graph.replay()
        torch.cuda.synchronize()
        replays, samples = 10, []
        for _ in range(5):
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            for _ in range(replays):
                graph.replay()
            end.record()
            end.synchronize()
            samples.append(begin.elapsed_time(end) / (replays * len(calls)))
        del graph
        return statistics.median(samples)

    def randn(self, *shape, dtype=None):
        return self.torch.randn(shape, generator=self.data_gen, device=self.device, dtype=dtype or self.dtype)

    def check(self, ok: bool, what: str) -> None:
        if not ok:
            self.report["failures"].append(what)
            print(f"CHECK FAILED: {what}", file=sys.stderr, flush=True)

    def save(self) -> None:
        """Atomic rewrite of the JSON and markdown results."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.report["elapsed_s"] = round(time.perf_counter() - self.start, 1)
        for suffix, text in ((".json", json.dumps(self.report, indent=2)), (".md", render_markdown(self.report))):
            tmp = self.path.with_suffix(suffix + ".tmp")
            tmp.write_text(text + "\n")
            os.replace(tmp, self.path.with_suffix(suffix))


def measure_ceilings(bench: Bench) -> None:
    torch = bench.torch
    numel = (1 << 30) if bench.cuda and not bench.args.dry_run else (1 << 16)   # 2 GiB of bf16 on the GPU
    src = bench.randn(numel)
    dst = torch.empty_like(src)
    copy_ms = bench.time_ms([lambda: dst.copy_(src)])
    size = 8192 if bench.cuda and not bench.args.dry_run else 128
    a, b = bench.randn(size, size), bench.randn(size, size)
    mm_ms = bench.time_ms([lambda: a @ b])
    bench.report["ceilings"] = {"copy_tb_per_s": 2 * src.nbytes / copy_ms / 1e9, "copy_bytes": 2 * src.nbytes,
                                "bf16_matmul_tflop_per_s": 2 * size**3 / mm_ms / 1e9, "matmul_size": size}
    del src, dst, a, b


class AttentionSet:
    """One input set of a sweep point in the runtime's layout: a head-major cache [slots, Hkv,
    capacity, D] per K and V holding each request's prefix and, after it, its tree tokens' K/V
    (what cache.store writes before attention), requests in shuffled slots."""

    def __init__(self, bench: Bench, lens, offsets, masks, slots, heads: dict):
        from kernels.tree_attention import plan_tree_attention
        torch, dev = bench.torch, bench.device
        hq, hkv, d = heads["num_heads"], heads["num_kv_heads"], heads["head_dim"]
        batch, total = len(lens), int(offsets[-1])
        capacity = int(max(lens)) + TREE_TOKENS
        self.q, self.k_tree, self.v_tree = bench.randn(total, hq, d), bench.randn(total, hkv, d), bench.randn(total, hkv, d)
        self.k_cache, self.v_cache = (bench.randn(batch, hkv, capacity, d) for _ in range(2))
        lens_t = torch.as_tensor(lens, dtype=torch.int64)
        tokens = torch.arange(total) - torch.repeat_interleave(offsets[:-1], offsets.diff())
        rows = torch.repeat_interleave(torch.as_tensor(slots), offsets.diff())
        where = (rows.to(dev), slice(None), (torch.repeat_interleave(lens_t, offsets.diff()) + tokens).to(dev))
        self.k_cache[where], self.v_cache[where] = self.k_tree, self.v_tree
        self.k_view, self.v_view = self.k_cache.permute(0, 2, 1, 3), self.v_cache.permute(0, 2, 1, 3)
        table = torch.as_tensor(slots, dtype=torch.int32, device=dev)[:, None]
        plan = lambda splits: plan_tree_attention(offsets.to(dev), masks.to(dev), lens_t.to(dev, torch.int32),  # noqa: E731
                                                  self.k_view, table, num_splits=splits)
        self.plans = {"default": plan(None), **{f"splits_{n}": plan(n) for n in FORCED_SPLITS}}
        self.out = torch.empty_like(self.q)
        self.slots = torch.as_tensor(slots, device=dev)
        self.sdpa_mask = _sdpa_mask(torch, lens_t, offsets, masks, capacity).to(dev)   # [B, 1, n, capacity]

    def ours(self, plan: str):
        from kernels.tree_attention import tree_attention
        batch = self.plans[plan]
        return lambda: tree_attention(self.q, self.k_tree, self.v_tree, self.k_view, self.v_view, batch, out=self.out)

    def sdpa(self):
        """echo_runtime.forward's fallback without its slot gather: queries padded per request in slot
        order, SDPA over the whole head-major cache (the layout SDPA wants) with a dense bool mask."""
        import torch
        batch = self.slots.numel()
        request_in_slot = torch.argsort(self.slots)
        q = self.q.view(batch, TREE_TOKENS, *self.q.shape[1:])[request_in_slot].transpose(1, 2)   # [B, Hq, n, D]
        mask = self.sdpa_mask[request_in_slot]
        return lambda: torch.nn.functional.scaled_dot_product_attention(q, self.k_cache, self.v_cache, attn_mask=mask,
                                                                        enable_gqa=True)

    def per_request(self, sdpa_out):
        """SDPA's [B (slot order), Hq, n, D] as ours: [T (request order), Hq, D]."""
        return sdpa_out[self.slots].transpose(1, 2).reshape(self.q.shape)


def _sdpa_mask(torch, lens, offsets, masks, capacity):
    """bool [B, 1, n, capacity]: the prefix, then each token's ancestors among the tree tokens after it."""
    from kernels.tree_masks import mask_bits
    batch = len(lens)
    keys = torch.arange(capacity)
    prefix = keys[None, :] < lens[:, None]                                          # [B, capacity]
    tree = mask_bits(masks, TREE_TOKENS).view(batch, TREE_TOKENS, TREE_TOKENS)      # [B, n, n]
    j = keys[None, :] - lens[:, None]                                               # tree index of each key
    in_tree = (j >= 0) & (j < TREE_TOKENS)
    tree_keys = torch.gather(tree, 2, j.clamp(0, TREE_TOKENS - 1)[:, None, :].expand(-1, TREE_TOKENS, -1))
    return (prefix[:, None, :] | (in_tree[:, None, :] & tree_keys))[:, None]


def _traffic(lens, heads, elem):
    """(bytes, flops) of one tree_attention call: each request's K/V prefix and tree once, q and out."""
    hq, hkv, d = heads["num_heads"], heads["num_kv_heads"], heads["head_dim"]
    keys = sum(int(n) + TREE_TOKENS for n in lens)
    tokens = len(lens) * TREE_TOKENS
    moved = 2 * keys * hkv * d * elem + 2 * tokens * hq * d * elem + 8 * tokens
    return moved, 4 * d * hq * TREE_TOKENS * keys


def bench_attention(bench: Bench) -> None:
    import numpy as np
    from kernels.testing import random_parents
    from kernels.tree_masks import ancestor_masks
    torch = bench.torch
    heads = DRY_HEADS if bench.args.dry_run else LLAMA_HEADS
    batches, (low, high) = (DRY_BATCHES, DRY_CONTEXT) if bench.args.dry_run else (GPU_BATCHES, GPU_CONTEXT)
    ceilings = bench.report["ceilings"]
    for batch in batches:
        lens = torch.randint(low, high + 1, (batch,), generator=bench.gen).tolist()
        offsets = torch.arange(batch + 1) * TREE_TOKENS
        masks = ancestor_masks(offsets, random_parents(bench.gen, offsets))
        slots = torch.randperm(batch, generator=bench.gen).tolist()
        moved, flops = _traffic(lens, heads, bench.randn(1).element_size())
        copies = max(1, min(16, -(-4 * bench.l2_bytes() // moved))) if bench.cuda else 1
        sets = [AttentionSet(bench, lens, offsets, masks, slots, heads) for _ in range(copies)]
        first = sets[0]
        want, against = _expected(bench, first)
        limit = REL_ERR_LIMIT[str(bench.dtype).replace("torch.", "")]
        row = {"batch": batch, "tree_tokens": TREE_TOKENS, "kv_min": min(lens), "kv_max": max(lens),
               "kv_mean": float(np.mean(lens)), "input_copies": copies, "checked_against": against,
               "splits_default": first.plans["default"].splits.request_splits.tolist() if batch <= 8
               else f"{first.plans['default'].splits.num_work} work items", "rel_err_limit": limit}
        for plan in first.plans:          # every split plan computes the same function (NaN-poisoned output)
            first.out.fill_(float("nan"))
            got = first.ours(plan)().float()
            rel_err = float((got - want).norm() / want.norm())
            if plan == "default":
                row.update(max_abs_err_vs_sdpa=float((got - want).abs().max()), rel_err_vs_sdpa=rel_err)
            row[f"{plan}_rel_err_vs_sdpa"] = rel_err
            bench.check(bool(torch.isfinite(got).all()) and rel_err <= limit,
                        f"tree_attention batch {batch} ({plan}): rel. error vs SDPA {rel_err:.2e} > {limit} "
                        "(or unwritten/non-finite rows)")
        for plan in first.plans:
            row[f"{plan}_ms"] = bench.time_ms([s.ours(plan) for s in sets])
        try:
            row["sdpa_ms"] = bench.time_ms([s.sdpa() for s in sets])
        except RuntimeError as error:           # e.g. out of memory for the dense mask: a finding
            row["sdpa_error"] = repr(error)[:300]
        _attention_metrics(row, moved, flops, ceilings)
        bench.report["tree_attention"].append(row)
        bench.save()
        print(f"  attention batch {batch}: {row['default_ms'] * 1e3:.0f} us, "
              f"{row['bandwidth_fraction']:.0%} of copy BW, x{row.get('speedup_vs_sdpa', float('nan')):.2f} SDPA",
              flush=True)
        del sets, first
        if bench.cuda:
            torch.cuda.empty_cache()


def _expected(bench: Bench, inputs: AttentionSet):
    """(expected output [T, Hq, D] fp32, its source): SDPA on the same cache, or, when SDPA cannot
    run the shape (its GQA path expands K/V 4x: out of memory at the largest batches), the fp32
    per-request reference."""
    try:
        return inputs.per_request(inputs.sdpa()()).float(), "sdpa"
    except RuntimeError as error:
        print(f"  SDPA failed ({error!r:.120}); checking against tree_attention_reference", flush=True)
        if bench.cuda:
            bench.torch.cuda.empty_cache()
        from kernels.tree_attention import tree_attention_reference
        batch = inputs.plans["default"]
        return tree_attention_reference(inputs.q, inputs.k_tree, inputs.v_tree, inputs.k_view, inputs.v_view,
                                        batch).float(), "tree_attention_reference"


def _attention_metrics(row, moved, flops, ceilings) -> None:
    seconds = row["default_ms"] / 1e3
    row.update(bytes=moved, flops=flops, flop_per_byte=flops / moved, memory_bound=moved >= MEMORY_BOUND_BYTES,
               tb_per_s=moved / seconds / 1e12, tflop_per_s=flops / seconds / 1e12)
    row["bandwidth_fraction"] = row["tb_per_s"] / ceilings["copy_tb_per_s"]
    row["matmul_fraction"] = row["tflop_per_s"] / ceilings["bf16_matmul_tflop_per_s"]
    if "sdpa_ms" in row:
        row["speedup_vs_sdpa"] = row["sdpa_ms"] / row["default_ms"]
    row["meets_targets"] = (row.get("speedup_vs_sdpa", 0.0) >= 1.5
                            and (not row["memory_bound"] or row["bandwidth_fraction"] >= 0.7))


def verify_inputs(bench: Bench, batch: int, nodes: int, vocab: int):
    """Trees whose target follows the first child at 80 % of nodes (long accepted paths)."""
    torch = bench.torch
    from kernels.testing import random_parents
    from kernels.tree_verify import plan_verify
    offsets = torch.arange(batch + 1) * nodes
    parents = random_parents(bench.gen, offsets)
    local = torch.arange(batch * nodes) % nodes
    tokens = local.clone()                                            # siblings distinct by construction
    global_parent = torch.where(parents >= 0, parents.long() + offsets[:-1].repeat_interleave(nodes), -1)
    first_child = torch.full((batch * nodes,), -1, dtype=torch.long)
    children = torch.nonzero(global_parent >= 0).flatten()
    first_child.scatter_reduce_(0, global_parent[children], children, reduce="amin", include_self=False)
    follow = (first_child >= 0) & (torch.rand(batch * nodes, generator=bench.gen) < 0.8)
    target = torch.where(follow, tokens[first_child.clamp(min=0)], nodes + local)
    trees = plan_verify(offsets.to(bench.device), parents.to(bench.device), tokens.to(bench.device))
    probs = torch.softmax(bench.randn(batch * nodes, vocab, dtype=torch.float32), dim=1)
    uniforms = torch.rand(batch, nodes, generator=bench.gen).to(bench.device)
    return trees, target.to(bench.device), probs, uniforms


def bench_verify(bench: Bench) -> None:
    from kernels.tree_verify import greedy_verify, greedy_verify_reference, sample_verify
    batch, vocab = (4, 50) if bench.args.dry_run else (256, 128256)
    for nodes in (16, 64):
        trees, target, probs, uniforms = verify_inputs(bench, batch, nodes, vocab)
        greedy = lambda: greedy_verify(trees, target)  # noqa: E731
        sample = lambda: sample_verify(trees, probs, uniforms, check_uniforms=False)  # noqa: E731
        expected, got = greedy_verify_reference(trees, target), greedy()
        matches = all(bool((getattr(got, name).cpu() == getattr(expected, name).cpu()).all())
                      for name in ("accepted", "accepted_len", "bonus_token"))
        bench.check(matches, f"tree_verify greedy batch {batch}, {nodes} nodes: differs from its reference")
        row = {"batch": batch, "nodes_per_tree": nodes, "vocab": vocab, "greedy_matches_reference": matches,
               "mean_accepted": float(got.accepted_len.float().mean()),
               "greedy_us": 1e3 * bench.time_ms([greedy]), "sample_us": 1e3 * bench.time_ms([sample])}
        bench.report["tree_verify"].append(row)
        bench.save()
        del probs


def bench_select(bench: Bench) -> None:
    import numpy as np
    from echo_sim.trees import LatticeBatch
    from echo_sim.trees import supertree_select as numpy_select
    from kernels.select import plan_select, supertree_select
    from kernels.testing import random_parents
    torch = bench.torch
    batch, nodes = (4, 20) if bench.args.dry_run else (256, 84)      # 84 = k 4, S 6 lattices (TRACES.md)
    offsets = torch.arange(batch + 1) * nodes
    parents = random_parents(bench.gen, offsets, root_first=False)
    gparent = torch.where(parents >= 0, parents.long() + offsets[:-1].repeat_interleave(nodes), -1).tolist()
    cond = (0.3 + 0.7 * torch.rand(batch * nodes, generator=bench.gen)).tolist()
    score, depth = [0.0] * len(cond), [0] * len(cond)
    for i, p in enumerate(gparent):   # cumulative products along paths, as drafters produce
        score[i] = cond[i] * (score[p] if p >= 0 else 1.0)
        depth[i] = 1 + (depth[p] if p >= 0 else 0)
    score_t = torch.tensor(score, dtype=torch.float32)
    budget, threshold = batch * 15, 0.05
    trees = plan_select(offsets.to(bench.device), parents.to(bench.device))
    rank = score_t.to(bench.device)
    run = lambda: supertree_select(trees, rank, threshold, budget, check_finite=False)  # noqa: E731
    lattice = LatticeBatch(offsets=offsets.numpy(), token=np.zeros(len(score), np.int32), parent=parents.numpy(),
                           depth=np.array(depth, np.int32), cond_prob=np.array(cond, np.float32),
                           score=score_t.numpy(), on_path=np.zeros(len(score), bool),
                           spine_run=np.zeros(batch, np.int32))
    expected = numpy_select(lattice, score_t.numpy(), score_t.numpy(), threshold, budget)
    identical = bool(np.array_equal(run().selected.cpu().numpy(), expected))
    bench.check(identical, f"select batch {batch}: differs from echo_sim.trees.supertree_select")
    row = {"batch": batch, "nodes_per_lattice": nodes, "budget": budget, "threshold": threshold,
           "identical_to_numpy": identical, "select_us": 1e3 * bench.time_ms([run])}
    bench.report["select"].append(row)
    bench.save()


def _fmt(value, pattern="{:.0f}") -> str:
    return "–" if value is None else pattern.format(value)


def render_markdown(report: dict) -> str:
    c = report["ceilings"]
    lines = [f"# Kernel benchmark: {report['machine']['device']}", "",
             f"Command: `{report['command']}`  ", f"Created: {report['created']}  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "  ",
             f"Ceilings: copy {c.get('copy_tb_per_s', 0):.2f} TB/s (read + write), "
             f"bf16 matmul {c.get('bf16_matmul_tflop_per_s', 0):.0f} TFLOP/s", ""]
    if report["dry_run"]:
        lines += ["**Dry run** (tiny shapes): numbers are meaningless, checks are real.", ""]
    forced = " | ".join(f"{n} splits" for n in FORCED_SPLITS)
    lines += [f"## tree_attention ({TREE_TOKENS} tree tokens, runtime cache layout; µs per call, CUDA-graph replay)", "",
              f"| batch | KV min–max | ours | {forced} | SDPA+mask | TB/s | of BW | × SDPA | MB | rel. err | targets |",
              "|---|---|---|" + "---|" * len(FORCED_SPLITS) + "---|---|---|---|---|---|---|"]
    for r in report["tree_attention"]:
        forced_cells = " | ".join(_fmt(r[f"splits_{n}_ms"] * 1e3) for n in FORCED_SPLITS)
        sdpa = _fmt(r["sdpa_ms"] * 1e3) if "sdpa_ms" in r else "error"
        lines.append(f"| {r['batch']} | {r['kv_min']}–{r['kv_max']} | {r['default_ms'] * 1e3:.0f} | {forced_cells} | "
                     f"{sdpa} | {r['tb_per_s']:.2f} | {r['bandwidth_fraction']:.0%} | "
                     f"{_fmt(r.get('speedup_vs_sdpa'), '{:.2f}')} | {r['bytes'] / 1e6:.0f} | {r['rel_err_vs_sdpa']:.1e} | "
                     f"{'met' if r['meets_targets'] else 'missed'} |")
    lines += ["", "## tree_verify and select (µs per call, CUDA-graph replay)", ""]
    for r in report["tree_verify"]:
        lines.append(f"- tree_verify batch {r['batch']}, {r['nodes_per_tree']} nodes, vocab {r['vocab']}: greedy "
                     f"{r['greedy_us']:.1f}, sampling {r['sample_us']:.1f}; mean accepted {r['mean_accepted']:.1f}; "
                     f"greedy matches reference: {r['greedy_matches_reference']}")
    for r in report["select"]:
        lines.append(f"- select batch {r['batch']}, {r['nodes_per_lattice']} nodes each, B = {r['budget']}: "
                     f"{r['select_us']:.1f}; identical to numpy: {r['identical_to_numpy']}")
    lines += [""] + [f"**Check failed**: {f}" for f in report["failures"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    import torch
    if "TRITON_INTERPRET" not in os.environ:      # before any kernel module is imported
        os.environ["TRITON_INTERPRET"] = "0" if torch.cuda.is_available() else "1"
    interpret = os.environ["TRITON_INTERPRET"] not in ("", "0")
    if not args.dry_run and (interpret or not torch.cuda.is_available()):
        print("benchmarks/kernels.py needs a CUDA GPU with TRITON_INTERPRET unset or 0 "
              f"(CUDA available: {torch.cuda.is_available()}); use --dry-run for tiny shapes", file=sys.stderr)
        return 2
    bench = Bench(args, argv)
    for section in (measure_ceilings, bench_attention, bench_verify, bench_select):
        print(f"[{time.perf_counter() - bench.start:6.1f}s] {section.__name__}", flush=True)
        section(bench)
        bench.save()
    print(render_markdown(bench.report))
    print(f"wrote {bench.path.with_suffix('.json')} and .md")
    return 1 if bench.report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
