"""GPU benchmark of the verification kernels against torch SDPA (dense mask) and FlexAttention.

    python benchmarks/kernels.py                          # one CUDA GPU, under 8 minutes
    python benchmarks/kernels.py --dry-run --out /tmp/k   # CPU smoke run (TRITON_INTERPRET=1, tiny shapes)

Order: (1) the machine's ceilings: device copy bandwidth (read + write) and the bf16 matrix rate on
random data; (2) tree_attention on Llama-3.1-8B heads (32 query, 8 KV, d = 128, bf16) for batch
16/64/256 × tree tokens 16/64 × KV 1k/4k plus batch 16 at KV 16k, paged (16-token pages, shuffled)
and contiguous, against SDPA with a dense boolean mask and compiled FlexAttention, with achieved
TB/s and TFLOP/s against the ceilings; (3) tree_verify (greedy, sampling) and select at batch 256,
eager and as CUDA-graph replays (kernel time without Python launch cost).

Targets (issue 4): tree_attention >= 70 % of the copy bandwidth on shapes moving >= 64 MB and
>= 1.5x SDPA; tree_verify and select under 20 us at batch 256. Results: <out>/kernels_<gpu>.json
and .md, rewritten after each section (an interrupted run keeps what it measured). Baselines are
skipped, and say so, when the 7.5-minute budget runs short.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path and its name would shadow the kernels
# package: put the repository root there instead.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

DEADLINE_S = 450
FLEX_BUDGET_S = 180
LLAMA_HEADS = dict(num_heads=32, num_kv_heads=8, head_dim=128)
GPU_SHAPES = [(b, n, kv) for b in (16, 64, 256) for n in (16, 64) for kv in (1024, 4096)] + [(16, 16, 16384),
                                                                                            (16, 64, 16384)]
DRY_HEADS = dict(num_heads=4, num_kv_heads=2, head_dim=64)
DRY_SHAPES = [(2, 5, 48), (3, 16, 32)]
PAGE_SIZE = 16
MEMORY_BOUND_BYTES = 64e6


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="results folder")
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on CPU under TRITON_INTERPRET=1")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


class Bench:
    """Timing, ceilings and the report of one run."""

    def __init__(self, args, argv):
        import torch
        self.torch, self.args, self.start = torch, args, time.perf_counter()
        self.device = torch.device("cpu" if args.dry_run else "cuda")
        self.gen = torch.Generator().manual_seed(args.seed)                 # structure (CPU)
        self.data_gen = self.gen if args.dry_run else torch.Generator(device="cuda").manual_seed(args.seed)
        name = "dry-run" if args.dry_run else torch.cuda.get_device_name(0)
        self.path = args.out / f"kernels_{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')}"
        self.report = {"command": " ".join(["python", "benchmarks/kernels.py", *argv]),
                       "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       "dry_run": args.dry_run, "machine": self._machine(name), "versions": self._versions(),
                       "ceilings": {}, "tree_attention": [], "tree_verify": [], "select": [], "notes": []}

    def _machine(self, name):
        info = {"device": name, "host": platform.node(), "cpu": platform.processor() or platform.machine()}
        if not self.args.dry_run:
            props = self.torch.cuda.get_device_properties(0)
            info.update(sms=props.multi_processor_count, memory_gib=round(props.total_memory / 2**30, 1))
        return info

    def _versions(self):
        import numpy
        import triton
        return {"python": platform.python_version(), "torch": self.torch.__version__, "triton": triton.__version__,
                "numpy": numpy.__version__, "cuda": self.torch.version.cuda}

    def time_left(self) -> float:
        return DEADLINE_S - (time.perf_counter() - self.start)

    def time_ms(self, fn, graph: bool = False) -> float | None:
        """Median milliseconds per call (CPU dry run: one warm call). graph: time CUDA-graph replays."""
        if self.args.dry_run:
            fn()
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1e3
        from triton.testing import do_bench, do_bench_cudagraph
        if not graph:
            return do_bench(fn, warmup=10, rep=60, return_mode="median")
        try:
            return do_bench_cudagraph(fn, rep=60, return_mode="median")
        except Exception as error:  # a launcher that cannot be captured is a finding, not a crash
            self.report["notes"].append(f"graph capture failed: {error!r}"[:300])
            return None

    def randn(self, *shape, dtype=None):
        return self.torch.randn(shape, generator=self.data_gen, device=self.device,
                                dtype=dtype or self.torch.float32)

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
    numel = (1 << 20) if bench.args.dry_run else (1 << 30)          # 2 GiB of bf16 on the GPU
    src = bench.randn(numel, dtype=torch.bfloat16).to(bench.device)
    dst = torch.empty_like(src)
    copy_ms = bench.time_ms(lambda: dst.copy_(src))
    size = 256 if bench.args.dry_run else 8192
    a, b = (bench.randn(size, size, dtype=torch.bfloat16).to(bench.device) for _ in range(2))
    mm_ms = bench.time_ms(lambda: a @ b)
    bench.report["ceilings"] = {"copy_tb_per_s": 2 * src.nbytes / copy_ms / 1e9, "copy_bytes": 2 * src.nbytes,
                                "bf16_matmul_tflop_per_s": 2 * size**3 / mm_ms / 1e9, "matmul_size": size}
    del src, dst, a, b


def attention_inputs(bench: Bench, batch: int, tokens: int, kv: int, heads: dict):
    """Equal-size requests: paged + contiguous caches with the same prefix, dense tensors for baselines."""
    from kernels.testing import random_parents
    from kernels.tree_attention import plan_tree_attention
    from kernels.tree_masks import ancestor_masks, mask_bits
    torch, dev, dtype = bench.torch, bench.device, torch_dtype(bench)
    hq, hkv, d = heads["num_heads"], heads["num_kv_heads"], heads["head_dim"]
    offsets = torch.arange(batch + 1) * tokens
    masks = ancestor_masks(offsets, random_parents(bench.gen, offsets))
    q, k_tree, v_tree = (bench.randn(batch * tokens, h, d, dtype=dtype).to(dev) for h in (hq, hkv, hkv))
    k_cont, v_cont = (bench.randn(batch, kv, hkv, d, dtype=dtype).to(dev) for _ in range(2))
    pages = batch * kv // PAGE_SIZE
    order = torch.randperm(pages, generator=bench.gen).to(dev)
    k_paged, v_paged = (torch.empty((pages, PAGE_SIZE, hkv, d), dtype=dtype, device=dev) for _ in range(2))
    k_paged[order], v_paged[order] = k_cont.view(pages, PAGE_SIZE, hkv, d), v_cont.view(pages, PAGE_SIZE, hkv, d)
    lens = torch.full((batch,), kv, dtype=torch.int32, device=dev)
    paged = plan_tree_attention(offsets.to(dev), masks.to(dev), lens, k_paged, order.view(batch, -1))
    cont = plan_tree_attention(offsets.to(dev), masks.to(dev), lens, k_cont)
    tree_allowed = mask_bits(masks, tokens).view(batch, tokens, tokens).to(dev)
    dense = {"q": q.view(batch, tokens, hq, d).transpose(1, 2).contiguous(),
             "k": torch.cat([k_cont, k_tree.view(batch, tokens, hkv, d)], 1).transpose(1, 2).contiguous(),
             "v": torch.cat([v_cont, v_tree.view(batch, tokens, hkv, d)], 1).transpose(1, 2).contiguous(),
             "tree_allowed": tree_allowed}
    return (q, k_tree, v_tree), (k_paged, v_paged, paged), (k_cont, v_cont, cont), dense


def torch_dtype(bench):
    return bench.torch.float32 if bench.args.dry_run else bench.torch.bfloat16


def _sdpa(bench, dense, kv):
    torch = bench.torch
    prefix = torch.ones(*dense["tree_allowed"].shape[:2], kv, dtype=torch.bool, device=bench.device)
    mask = torch.cat([prefix, dense["tree_allowed"]], dim=2)[:, None]     # [B, 1, n, kv + n]
    return lambda: torch.nn.functional.scaled_dot_product_attention(dense["q"], dense["k"], dense["v"],
                                                                    attn_mask=mask, enable_gqa=True)


def _flex(bench, dense, kv):
    torch = bench.torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    allowed, (batch, _, tokens, _) = dense["tree_allowed"], dense["q"].shape

    def tree_or_prefix(b, h, q_idx, kv_idx):
        j = kv_idx - kv
        return (kv_idx < kv) | ((j >= 0) & allowed[b, q_idx, j.clamp(0, tokens - 1)])

    compile_now = not bench.args.dry_run
    block_mask = create_block_mask(tree_or_prefix, batch, None, tokens, kv + tokens, device=bench.device,
                                   _compile=compile_now)
    if compile_now and not hasattr(bench, "flex_compiled"):
        import torch._dynamo
        for knob in ("cache_size_limit", "recompile_limit"):      # one compile per shape, never eager fallback
            if hasattr(torch._dynamo.config, knob):
                setattr(torch._dynamo.config, knob, 64)
        bench.flex_compiled = torch.compile(flex_attention, dynamic=False)
    run = bench.flex_compiled if compile_now else flex_attention
    return lambda: run(dense["q"], dense["k"], dense["v"], block_mask=block_mask, enable_gqa=True)


def _traffic(batch, tokens, kv, heads, elem):
    """(bytes, flops) of one tree_attention call: K/V prefix once per request (COST_MODEL.md)."""
    hq, hkv, d = heads["num_heads"], heads["num_kv_heads"], heads["head_dim"]
    kv_bytes = 2 * batch * (kv + tokens) * hkv * d * elem
    io_bytes = 2 * batch * tokens * hq * d * elem + 8 * batch * tokens
    return kv_bytes + io_bytes, 4 * d * hq * batch * tokens * (kv + tokens)


def bench_attention(bench: Bench) -> None:
    from kernels.tree_attention import launch_grid, tree_attention
    heads, shapes = (DRY_HEADS, DRY_SHAPES) if bench.args.dry_run else (LLAMA_HEADS, GPU_SHAPES)
    ceilings, flex_spent = bench.report["ceilings"], 0.0
    for batch, tokens, kv in shapes:
        if bench.time_left() < 90:
            bench.report["notes"].append(f"attention shape {(batch, tokens, kv)} and later skipped: time budget")
            break
        (q, kt, vt), (kp, vp, paged), (kc, vc, cont), dense = attention_inputs(bench, batch, tokens, kv, heads)
        out = bench.torch.empty_like(q)
        ours = lambda: tree_attention(q, kt, vt, kp, vp, paged, out=out)  # noqa: E731
        row = {"batch": batch, "tree_tokens": tokens, "kv_len": kv,
               "grid": list(launch_grid(paged, heads["num_heads"], heads["num_kv_heads"], q.device)),
               "paged_ms": bench.time_ms(ours),
               "contiguous_ms": bench.time_ms(lambda: tree_attention(q, kt, vt, kc, vc, cont, out=out))}
        sdpa = _sdpa(bench, dense, kv)
        reference = sdpa().transpose(1, 2).reshape(q.shape).float()
        row["max_abs_err_vs_sdpa"] = float((ours().float() - reference).abs().max())
        row["sdpa_ms"] = bench.time_ms(sdpa)
        if flex_spent < FLEX_BUDGET_S and bench.time_left() > 120:
            started = time.perf_counter()
            try:
                row["flex_ms"] = bench.time_ms(_flex(bench, dense, kv))
            except Exception as error:
                row["flex_error"] = repr(error)[:300]
            flex_spent += time.perf_counter() - started
        else:
            row["flex_skipped"] = "time budget"
        _attention_metrics(row, *_traffic(batch, tokens, kv, heads, q.element_size()), ceilings)
        bench.report["tree_attention"].append(row)
        bench.save()
        del q, kt, vt, kp, vp, kc, vc, dense, out
        if not bench.args.dry_run:
            bench.torch.cuda.empty_cache()


def _attention_metrics(row, moved, flops, ceilings) -> None:
    seconds = row["paged_ms"] / 1e3
    row.update(bytes=moved, flops=flops, flop_per_byte=flops / moved, memory_bound=moved >= MEMORY_BOUND_BYTES,
               tb_per_s=moved / seconds / 1e12, tflop_per_s=flops / seconds / 1e12)
    row["bandwidth_fraction"] = row["tb_per_s"] / ceilings["copy_tb_per_s"]
    row["matmul_fraction"] = row["tflop_per_s"] / ceilings["bf16_matmul_tflop_per_s"]
    row["speedup_vs_sdpa"] = row["sdpa_ms"] / row["paged_ms"]
    if "flex_ms" in row:
        row["speedup_vs_flex"] = row["flex_ms"] / row["paged_ms"]
    row["meets_targets"] = (row["speedup_vs_sdpa"] >= 1.5
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
    probs = torch.softmax(bench.randn(batch * nodes, vocab).to(bench.device), dim=1)
    uniforms = torch.rand(batch, nodes, generator=bench.gen).to(bench.device)
    return trees, target.to(bench.device), probs, uniforms


def bench_verify(bench: Bench) -> None:
    from kernels.tree_verify import greedy_verify, greedy_verify_reference, sample_verify
    batch, vocab = (4, 50) if bench.args.dry_run else (256, 128256)
    for nodes in (16, 64):
        trees, target, probs, uniforms = verify_inputs(bench, batch, nodes, vocab)
        greedy = lambda: greedy_verify(trees, target)  # noqa: E731
        sample = lambda: sample_verify(trees, probs, uniforms, check_uniforms=False)  # noqa: E731
        expected = greedy_verify_reference(trees, target)
        got = greedy()
        row = {"batch": batch, "nodes_per_tree": nodes, "vocab": vocab,
               "greedy_matches_reference": bool((got.accepted_len.cpu() == expected.accepted_len).all()
                                                and (got.bonus_token.cpu() == expected.bonus_token).all()),
               "mean_accepted": float(got.accepted_len.float().mean()),
               "greedy_us": 1e3 * bench.time_ms(greedy), "greedy_graph_us": _us(bench.time_ms(greedy, graph=True)),
               "sample_us": 1e3 * bench.time_ms(sample), "sample_graph_us": _us(bench.time_ms(sample, graph=True))}
        bench.report["tree_verify"].append(row)
        bench.save()
        del probs


def _us(ms):
    return None if ms is None else 1e3 * ms


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
    row = {"batch": batch, "nodes_per_lattice": nodes, "budget": budget, "threshold": threshold,
           "identical_to_numpy": bool(np.array_equal(run().selected.cpu().numpy(), expected)),
           "select_us": 1e3 * bench.time_ms(run), "select_graph_us": _us(bench.time_ms(run, graph=True))}
    bench.report["select"].append(row)
    bench.save()


def _fmt(value) -> str:
    return "–" if value is None else f"{value:.1f}"


def render_markdown(report: dict) -> str:
    c = report["ceilings"]
    lines = [f"# Kernel benchmark: {report['machine']['device']}", "",
             f"Command: `{report['command']}`  ", f"Created: {report['created']}  ",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + "  ",
             f"Ceilings: copy {c.get('copy_tb_per_s', 0):.2f} TB/s (read + write), "
             f"bf16 matmul {c.get('bf16_matmul_tflop_per_s', 0):.0f} TFLOP/s", ""]
    if report["dry_run"]:
        lines += ["**Dry run** (CPU, Triton interpreter, tiny shapes): numbers are meaningless.", ""]
    lines += ["## tree_attention (paged; µs; fractions of the measured ceilings)", "",
              "| batch | tree | KV | ours | contig | SDPA | Flex | TB/s | of BW | TFLOP/s | × SDPA | MB | err | targets |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["tree_attention"]:
        flex = f"{r['flex_ms'] * 1e3:.0f}" if "flex_ms" in r else "–"
        lines.append(f"| {r['batch']} | {r['tree_tokens']} | {r['kv_len']} | {r['paged_ms'] * 1e3:.0f} | "
                     f"{r['contiguous_ms'] * 1e3:.0f} | {r['sdpa_ms'] * 1e3:.0f} | {flex} | {r['tb_per_s']:.2f} | "
                     f"{r['bandwidth_fraction']:.0%} | {r['tflop_per_s']:.0f} | {r['speedup_vs_sdpa']:.2f} | "
                     f"{r['bytes'] / 1e6:.0f} | {r['max_abs_err_vs_sdpa']:.1e} | "
                     f"{'met' if r['meets_targets'] else 'missed'} |")
    lines += ["", "## tree_verify and select (µs; graph = CUDA-graph replay, no launch cost)", ""]
    for r in report["tree_verify"]:
        lines.append(f"- tree_verify batch {r['batch']}, {r['nodes_per_tree']} nodes, vocab {r['vocab']}: greedy "
                     f"{_fmt(r['greedy_us'])} (graph {_fmt(r['greedy_graph_us'])}), sampling {_fmt(r['sample_us'])} "
                     f"(graph {_fmt(r['sample_graph_us'])}); mean accepted {r['mean_accepted']:.1f}; "
                     f"greedy matches reference: {r['greedy_matches_reference']}")
    for r in report["select"]:
        lines.append(f"- select batch {r['batch']}, {r['nodes_per_lattice']} nodes each, B = {r['budget']}: "
                     f"{_fmt(r['select_us'])} (graph {_fmt(r['select_graph_us'])}); "
                     f"identical to numpy: {r['identical_to_numpy']}")
    lines += [""] + [f"Note: {n}" for n in report["notes"]]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"       # before any kernel module is imported
    elif os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("benchmarks/kernels.py: unset TRITON_INTERPRET for a GPU run (or pass --dry-run)", file=sys.stderr)
        return 2
    import torch
    if not args.dry_run and not torch.cuda.is_available():
        print("benchmarks/kernels.py needs a CUDA GPU (torch.cuda.is_available() is False); "
              "use --dry-run for a CPU smoke run", file=sys.stderr)
        return 2
    bench = Bench(args, argv)
    for section in (measure_ceilings, bench_attention, bench_verify, bench_select):
        print(f"[{time.perf_counter() - bench.start:6.1f}s] {section.__name__}", flush=True)
        section(bench)
        bench.save()
    print(render_markdown(bench.report))
    print(f"wrote {bench.path.with_suffix('.json')} and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
