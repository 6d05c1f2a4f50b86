"""Compile every kernel for a CUDA GPU without one: `python -m kernels.compile_check [--arch 90]`.

GPU-only errors (layouts, shared memory, wgmma lowering, ptxas) never show under TRITON_INTERPRET=1,
so this runs the real compiler pipeline (ttir → ttgir → llir → ptx → cubin with Triton's bundled
ptxas) for a CUDA target of the given compute capability over the kernels' specialisation space:
dtypes, head dims, contiguous/paged, split/unsplit, and every autotune config of one shape.
Must run with TRITON_INTERPRET unset or 0 (the kernels must be real JIT functions).

Registers and spills come from ptxas's allocation, not the PTX (where ptxas spills cannot be seen):
on a CUDA machine Triton's own `CompiledKernel.n_regs` / `n_spills` (read when the cubin is
loaded), elsewhere `cuobjdump --dump-resource-usage` of the same cubin (REG, and LOCAL + STACK
bytes per thread). Exit 1 when a variant has no cubin or an autotune candidate spills.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("kernels.compile_check needs TRITON_INTERPRET=0 (set before importing kernels)")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernels import select, tree_attention, tree_verify  # noqa: E402

SM90_MAX_SHARED = 232448   # bytes of shared memory one block may use on H100/H200
DTYPE_NAMES = {"fp16": "*fp16", "bf16": "*bf16", "fp32": "*fp32"}


def _signature(fn, pointers: dict[str, str], floats=(), constexprs=None) -> tuple[dict, dict, dict]:
    """(signature, constexprs, attrs): pointers as given, named floats fp32, other args i32.

    Pointers and strides get the 16-divisibility a launch with aligned tensors specialises, so the
    compiled code is the vectorised, pipelined one a real launch gets.
    """
    constexprs = constexprs or {}
    signature, attrs = {}, {}
    for index, name in enumerate(fn.arg_names):
        if name in constexprs:
            signature[name] = "constexpr"
        elif name in pointers:
            signature[name] = pointers[name]
            attrs[(index,)] = [["tt.divisibility", 16]]   # what a launch with aligned tensors specialises
        else:
            signature[name] = "fp32" if name in floats else "i32"
            if name.startswith("stride") and name != "stride_bt":
                attrs[(index,)] = [["tt.divisibility", 16]]  # strides of [.., heads, head_dim] tensors
    return signature, constexprs, attrs


def _attention_variants(quick: bool):
    fn = tree_attention._tree_attention_kernel.fn
    configs = tree_attention._tree_attention_kernel.configs
    # (dtype, head_dim, page size, has splits, rows per program): 64 rows = 16 tree tokens x 4 heads,
    # 128 rows = a chunk of 64 tree tokens x 4 heads (the Llama-3.1-8B benchmark shapes)
    shapes = [(dtype, d, page, split, 64) for dtype in ("fp16", "bf16", "fp32") for d in (64, 128)
              for page in (0, 16) for split in (False, True)]
    tuned = [("bf16", 128, 16, False, 64), ("bf16", 128, 16, True, 64), ("bf16", 128, 16, True, 128)]
    if quick:
        shapes = []
    for shape in tuned + [s for s in shapes if s not in tuned]:
        dtype, head_dim, page, split, block_m = shape
        candidates = tree_attention._prune_configs(configs, {"BLOCK_M": block_m})
        for config in candidates if shape in tuned else candidates[:1]:
            data = DTYPE_NAMES[dtype]
            pointers = dict.fromkeys(("Q", "K_TREE", "V_TREE", "K_CACHE", "V_CACHE", "OUT"), data)
            pointers.update(PART="*fp32", LSE="*fp32", TREE_OFFSETS="*i32", TREE_MASK="*i64", KV_LENS="*i32",
                            BLOCK_TABLE="*i32", WORK_REQUEST="*i32", WORK_SPLIT="*i32", REQUEST_SPLITS="*i32",
                            PARTIAL_BASE="*i32")
            constexprs = dict(GROUP=4, HEAD_DIM=head_dim, BLOCK_M=block_m, BLOCK_T=16 if block_m == 64 else 64,
                              PAGED=page > 0, HAS_SPLITS=split, UPCAST=False,
                              DOT_PRECISION="ieee" if dtype == "fp32" else "tf32", **config.kwargs)
            label = (f"{dtype} d={head_dim} page={page} split={int(split)} M={block_m} "
                     f"N={config.kwargs['BLOCK_N']} w={config.num_warps} s={config.num_stages}")
            signature = _signature(fn, pointers, ("scale_log2",), constexprs)
            yield fn, label, signature, config.num_warps, config.num_stages, shape in tuned
    merge = tree_attention._merge_splits_kernel
    for dtype in ("bf16", "fp32"):
        pointers = dict(PART="*fp32", LSE="*fp32", OUT=DTYPE_NAMES[dtype], MERGE_TOKENS="*i32", MERGE_REQUEST="*i32",
                        TREE_OFFSETS="*i32", REQUEST_SPLITS="*i32", PARTIAL_BASE="*i32")
        yield merge, dtype, _signature(merge, pointers, constexprs=dict(BLOCK_S=4, HEAD_DIM=128)), 4, 1, False


def _verify_variants():
    ints = dict(OFFSETS="*i32", PARENTS="*i32", TOKENS="*i64", ACCEPTED="*i32", ACCEPTED_LEN="*i32", BONUS="*i64")
    greedy = tree_verify._greedy_walk_kernel
    for block in (16, 64):
        yield greedy, f"BLOCK={block}", _signature(greedy, dict(ints, TARGET="*i64"), constexprs=dict(BLOCK=block)), 4, 1, False
    sample = tree_verify._sample_walk_kernel
    pointers = dict(ints, PROBS="*fp32", UNIFORMS="*fp32")
    constexprs = dict(BLOCK=64, KMAX=8, BLOCK_V=tree_verify.VOCAB_TILE)
    yield sample, "BLOCK=64 KMAX=8", _signature(sample, pointers, constexprs=constexprs), 4, 1, False


def _select_variants():
    gate = select._gate_depth_kernel
    pointers = dict(OFFSETS="*i32", PARENTS="*i32", GATE="*fp32", SCRATCH="*i32", COUNTS="*i32")
    yield gate, "BLOCK=128", _signature(gate, pointers, ("threshold",), dict(BLOCK=128, ROUNDS=7)), 4, 1, False
    top_b = select._top_b_kernel
    pointers = dict(RANK="*fp32", SCORE="*fp32", SCRATCH="*i32", SELECTED="*u8", COUNTS="*i32")
    yield top_b, "BLOCK=4096", _signature(top_b, pointers, constexprs=dict(BLOCK=4096)), 16, 1, False


def register_usage(compiled) -> dict:
    """{"regs", "spill_bytes", "source"} of a compiled kernel (module docstring)."""
    import torch

    if torch.cuda.is_available():
        try:
            compiled._init_handles()    # loads the cubin: Triton reads ptxas's numbers from the driver
            return {"regs": compiled.n_regs, "spill_bytes": compiled.n_spills, "source": "triton n_regs/n_spills"}
        except (AttributeError, RuntimeError) as error:   # another Triton's internals: the cubin still says
            print(f"Triton's n_regs/n_spills unavailable ({error!r}); reading the cubin", file=sys.stderr)
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        report = subprocess.run([str(tool), "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                                check=True).stdout
    usage = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", report)}
    return {"regs": usage["REG"], "spill_bytes": usage.get("LOCAL", 0) + usage.get("STACK", 0),
            "source": "cuobjdump resource usage"}


def compile_all(arch: int = 90, quick: bool = False) -> list[dict]:
    """Compile every variant for CUDA compute capability `arch`; one row per variant (raises on error)."""
    target = GPUTarget("cuda", arch, 32)
    rows = []
    for variants in (_attention_variants(quick), _verify_variants(), _select_variants()):
        for fn, label, (signature, constexprs, attrs), num_warps, num_stages, candidate in variants:
            start = time.perf_counter()
            compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                      options={"num_warps": num_warps, "num_stages": num_stages})
            rows.append({"kernel": fn.__name__, "variant": label, "stages": sorted(compiled.asm),
                         "shared_bytes": compiled.metadata.shared, "seconds": time.perf_counter() - start,
                         "autotune_candidate": candidate, **register_usage(compiled)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 90 for H100/H200")
    parser.add_argument("--quick", action="store_true", help="the autotune candidates of the benchmark shapes only")
    args = parser.parse_args(argv)
    rows = compile_all(args.arch, args.quick)
    for row in rows:
        note = "" if row["shared_bytes"] <= SM90_MAX_SHARED else "  (over the sm_90 shared-memory limit: autotune skips it)"
        note += f"  (spills {row['spill_bytes']} B/thread)" if row["spill_bytes"] else ""
        print(f"{row['kernel']:<24} {row['variant']:<48} regs={row['regs']:>3} smem={row['shared_bytes']:>6} "
              f"{row['seconds']:5.1f}s {'+'.join(row['stages'])}{note}")
    missing = [row for row in rows if "cubin" not in row["stages"]]
    spilling = [row for row in rows if row["autotune_candidate"] and row["spill_bytes"]]
    print(f"compiled {len(rows)} variants for sm_{args.arch} with triton {triton.__version__} "
          f"(registers: {rows[0]['source']}); {len(missing)} without cubin; {len(spilling)} spilling autotune candidates")
    return 1 if missing or spilling else 0


if __name__ == "__main__":
    sys.exit(main())
