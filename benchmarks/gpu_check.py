"""The GPU half in one run: what an H200 must show, in under 5 minutes (benchmarks/gpu_check.sh).

    python3 benchmarks/gpu_check.py OUTDIR [--dry-run] [--work DIR] [--budget-s 285]

Sections, in order, each a subprocess under its own time limit (and the run's remaining budget),
each result packed into OUTDIR as soon as it exists:

    environment   nvidia-smi, python/torch/triton/numpy/transformers/simpy versions, the device
    kernel tests  tests/test_kernels_*.py and the runtime's kernel path, compiled (TRITON_INTERPRET=0,
                  pytest-xdist), while `kernels.compile_check --quick` reports ptxas registers/spills
                  and warm-up processes compile the runtime's tree_attention variants in parallel
    kernels       benchmarks/kernels.py: copy/matmul ceilings, the tree-attention sweep, verify, select
    calibrate     a reduced `echo-run calibrate` of Llama-3.1-8B shapes (random bf16 weights)
    validate      `echo-run validate --random-shape llama-3.1-8b --trace <shipped MT-Bench trace>`:
                  ar, static, echo at 3 concurrencies, timing only, against that calibration

OUTDIR holds at most 6 files (the device returns 8): gpu_check.log (everything printed, the
environment and a summary at the end), kernels.json, kernels.md, the calibration
(h200_llama-3.1-8b.json), validation.json, and extras.tar.gz (the calibration's measurements,
validation rows and step tables, test and compile reports). Intermediate files live in --work
(default /tmp/echo_gpu_check): calibrate and validate resume from it, so a rerun on the same
machine redoes only what is missing. Exit 0 when every section passed.

--dry-run: the same drivers on tiny shapes (tiny-llama, a few batches) on this machine: CPU under
the Triton interpreter without CUDA; the kernel tests are left to the test suite itself. The test
suite runs it (tests/test_gpu_check.py), so the GPU path cannot rot between GPU runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder comes first on sys.path and benchmarks/kernels.py would shadow
# the kernels package: put the repository root there instead.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO / "benchmarks"]
sys.path.insert(0, str(REPO))
TRACE = "traces/mt_bench_qwen_coder.trace.npz"
KERNEL_TESTS = ["tests/test_kernels_tree_attention.py", "tests/test_kernels_tree_verify.py",
                "tests/test_kernels_select.py", "tests/test_kernels_benchmark.py",
                "tests/test_runtime.py::test_kernel_path_gives_the_same_greedy_output"]
# (tree tokens, splits) of one warm-up launch each: the runtime's (rows, tree tile, split) variants
WARM_VARIANTS = ((16, 1), (16, 2), (17, 1), (17, 2))

GPU = {
    "shape": "llama-3.1-8b", "hardware": "h200",
    "calibrate": ["--batch-sizes", "1,8,32,128", "--tokens-per-request", "1,4,16", "--kv-lens", "1024",
                  "--draft-depths", "2,4,6", "--draft-width", "4", "--curve-tokens", "1,2,3,4,6,8,12,16,24,32,48,64",
                  "--prefill-tokens", "128,512", "--max-batch-kv-tokens", "131072", "--repeats", "3", "--warmup", "1",
                  "--overhead-steps", "6"],
    "validate": ["--policies", "ar,static,echo", "--concurrency", "1,4,16", "--requests-per-client", "2"],
    "limits": {"environment": 20, "kernel tests": 90, "kernels": 75, "calibrate": 70, "validate": 100},
}
DRY = {
    "shape": "tiny-llama", "hardware": "dry-run",
    "calibrate": ["--batch-sizes", "1,2", "--tokens-per-request", "1,4", "--kv-lens", "16", "--draft-depths", "2",
                  "--curve-tokens", "2", "--prefill-tokens", "8", "--repeats", "1", "--warmup", "0",
                  "--overhead-steps", "2"],
    "validate": ["--policies", "ar,static,echo", "--concurrency", "2", "--requests-per-client", "1"],
    "limits": {"environment": 60, "kernel tests": 0, "kernels": 150, "calibrate": 150, "validate": 180},
}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on this machine (module docstring)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/echo_gpu_check"), help="intermediate files")
    parser.add_argument("--budget-s", type=float, default=285.0, help="wall-clock budget of the whole run")
    parser.add_argument("--warm", help=argparse.SUPPRESS)      # internal: one warm-up launch "tokens,splits"
    return parser.parse_args(argv)


class Run:
    """The log, the time budget and the packing of one gpu_check run."""

    def __init__(self, args):
        self.args, self.start = args, time.monotonic()
        self.plan = DRY if args.dry_run else GPU
        self.out, self.work = args.outdir, args.work
        self.out.mkdir(parents=True, exist_ok=True)
        self.work.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "gpu_check.log"
        self.log_path.write_text("")
        self.results: list[tuple[str, str, float]] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}

    def log(self, text: str) -> None:
        print(text, flush=True)
        with open(self.log_path, "a") as handle:
            handle.write(text + "\n")

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.start)

    def command(self, argv: list[str], limit: float, env: dict | None = None, log_name: str | None = None) -> int:
        """Run one command with its output into the log (and work/<log_name>); 124 when it ran out of time."""
        limit = max(1.0, min(limit, self.left() - 5))
        self.log(f"$ {' '.join(argv)}   (limit {limit:.0f} s)")
        begin = time.monotonic()
        with subprocess.Popen(argv, cwd=REPO, env=env or self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) as proc:
            sink = open(self.work / log_name, "w") if log_name else None
            try:
                for line in _lines_until(proc, begin + limit):
                    self.log(line.rstrip("\n"))
                    if sink:
                        sink.write(line)
            finally:
                if sink:
                    sink.close()
            try:
                return proc.wait(timeout=max(0.1, begin + limit - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.log(f"  (stopped after {limit:.0f} s)")
                return 124

    def section(self, name: str, fn) -> None:
        limit = self.plan["limits"][name]
        begin = time.monotonic()
        if limit <= 0:
            status = "skipped (dry run: the test suite runs these)"
        elif self.left() < 15:
            status = "skipped (time budget)"
        else:
            self.log(f"\n=== {name} ({self.left():.0f} s of the budget left) ===")
            try:
                status = "ok" if fn(self, limit) == 0 else "FAILED"
            except Exception as error:        # a section's failure is a finding; the next sections still run
                status = f"FAILED ({error!r})"[:200]
        self.results.append((name, status, time.monotonic() - begin))
        self.log(f"--- {name}: {status} ({time.monotonic() - begin:.0f} s)")
        self.pack()

    def pack(self) -> None:
        """OUTDIR's at most 6 files from what exists now (rewritten after every section)."""
        for pattern, name in (("kernels/kernels_*.json", "kernels.json"), ("kernels/kernels_*.md", "kernels.md"),
                              ("validation/validation.json", "validation.json")):
            found = sorted(self.work.glob(pattern))
            if found:
                shutil.copyfile(found[0], self.out / name)
        calibration = self.calibration_path()
        if calibration.is_file():
            shutil.copyfile(calibration, self.out / calibration.name)
        tmp = self.out / "extras.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            for path in sorted(self.work.rglob("*")):
                if path.is_file() and path != calibration:
                    tar.add(path, arcname=str(path.relative_to(self.work)))
        os.replace(tmp, self.out / "extras.tar.gz")

    def calibration_path(self) -> Path:
        return self.work / f"{self.plan['hardware']}_{self.plan['shape']}.json"

    def device_args(self) -> list[str]:
        return ["--device", "cpu", "--threads", "1"] if self.args.dry_run else ["--device", "cuda", "--threads", "0"]


def _lines_until(proc, deadline: float):
    """The process's output lines until it ends or the deadline passes (a reader thread, so a
    silent process cannot hold the run past its limit)."""
    import queue
    import threading

    lines: queue.Queue = queue.Queue()

    def pump():
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=min(1.0, left))
        except queue.Empty:
            continue
        if line is None:
            return
        yield line


def environment(run: Run, limit: float) -> int:
    if shutil.which("nvidia-smi"):
        run.command(["nvidia-smi"], limit / 2)
    else:
        run.log("nvidia-smi: not found (no NVIDIA driver on this machine)")
    probe = ("import json, platform, importlib\n"
             "out = {'python': platform.python_version(), 'executable': __import__('sys').executable}\n"
             "for name in ('torch', 'triton', 'numpy', 'transformers', 'simpy', 'pandas', 'pytest', 'xdist'):\n"
             "    try: out[name] = getattr(importlib.import_module(name), '__version__', 'present')\n"
             "    except ImportError: out[name] = None\n"
             "import torch\n"
             "out['cuda'] = torch.version.cuda\n"
             "if torch.cuda.is_available():\n"
             "    p = torch.cuda.get_device_properties(0)\n"
             "    out['device'] = {'name': p.name, 'sms': p.multi_processor_count, 'memory_gib': round(p.total_memory / 2**30, 1),\n"
             "                     'capability': list(torch.cuda.get_device_capability(0)), 'l2_bytes': getattr(p, 'L2_cache_size', None)}\n"
             "print(json.dumps(out, indent=1))\n")
    code = run.command([sys.executable, "-c", probe], limit / 2, log_name="environment.json")
    return code


def kernel_tests(run: Run, limit: float) -> int:
    """Compiled kernel tests, the ptxas report and the runtime variants' warm-up, all at once."""
    env = {**run.env, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    report_file = open(run.work / "compile_check.txt", "w")
    background = [subprocess.Popen([sys.executable, "-m", "kernels.compile_check", "--quick"], cwd=REPO, env=env,
                                   stdout=report_file, stderr=subprocess.STDOUT)]
    for tokens, splits in WARM_VARIANTS:
        background.append(subprocess.Popen([sys.executable, __file__, str(run.out), "--warm", f"{tokens},{splits}"],
                                           cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
    xdist = ["-n", "8"] if _has_module("xdist") else []
    code = run.command([sys.executable, "-m", "pytest", "-q", "-m", "not gpu", "-p", "no:cacheprovider", *xdist,
                        "--junitxml", str(run.work / "kernel_tests.xml"), *KERNEL_TESTS], limit, env=env,
                       log_name="kernel_tests.txt")
    deadline = time.monotonic() + max(5.0, min(30.0, run.left() - 200))
    for proc in background:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    report_file.close()
    report = (run.work / "compile_check.txt").read_text()
    run.log("compile_check --quick (ptxas registers/spills):\n" + report[-3000:])
    warm_ok = all(proc.returncode == 0 for proc in background[1:])
    run.log(f"warm-up of {len(WARM_VARIANTS)} runtime variants: {'done' if warm_ok else 'incomplete'}")
    return code or background[0].returncode


def _has_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def warm(spec: str) -> int:
    """One tree_attention launch of the runtime's layout (Llama heads, bf16; tiny context) so that
    autotuning compiles its variant into Triton's cache while other sections run."""
    import torch

    from kernels.tree_attention import plan_tree_attention, tree_attention
    from kernels.tree_masks import ancestor_masks
    tokens, splits = (int(v) for v in spec.split(","))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    hq, hkv, d, kv = (32, 8, 128, 2048) if device == "cuda" else (4, 2, 64, 40)
    offsets = torch.tensor([0, tokens])
    masks = ancestor_masks(offsets, torch.arange(-1, tokens - 1, dtype=torch.int32))     # a chain
    cache = torch.randn(1, hkv, kv + tokens, d, dtype=dtype, device=device)
    view = cache.permute(0, 2, 1, 3)
    batch = plan_tree_attention(offsets.to(device), masks.to(device), torch.tensor([kv], device=device), view,
                                torch.zeros(1, 1, dtype=torch.int32, device=device), num_splits=splits)
    q = torch.randn(tokens, hq, d, dtype=dtype, device=device)
    kt = torch.randn(tokens, hkv, d, dtype=dtype, device=device)
    out = tree_attention(q, kt, kt, view, view, batch)
    return 0 if bool(torch.isfinite(out).all()) else 1


def kernels(run: Run, limit: float) -> int:
    dry = ["--dry-run"] if run.args.dry_run else []
    return run.command([sys.executable, "benchmarks/kernels.py", *dry, "--out", str(run.work / "kernels")], limit)


def calibrate(run: Run, limit: float) -> int:
    plan = run.plan
    return run.command([sys.executable, "-m", "echo_runtime.cli", "calibrate", "--random-shape", plan["shape"],
                        *run.device_args(), "--hardware", plan["hardware"], *plan["calibrate"],
                        "--out", str(run.calibration_path())], limit)


def validate(run: Run, limit: float) -> int:
    if not run.calibration_path().is_file():
        run.log(f"no calibration at {run.calibration_path()}: validate needs the calibrate section")
        return 1
    plan = run.plan
    return run.command([sys.executable, "-m", "echo_runtime.cli", "validate", "--random-shape", plan["shape"],
                        *run.device_args(), "--trace", TRACE, *plan["validate"],
                        "--calibration", str(run.calibration_path()), "--out", str(run.work / "validation")], limit)


SECTIONS = (("environment", environment), ("kernel tests", kernel_tests), ("kernels", kernels),
            ("calibrate", calibrate), ("validate", validate))


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.warm:
        return warm(args.warm)
    run = Run(args)
    run.log(f"gpu_check {'(dry run) ' if args.dry_run else ''}into {run.out}, work {run.work}, "
            f"budget {args.budget_s:.0f} s")
    for name, fn in SECTIONS:
        run.section(name, fn)
    run.log("\n=== summary ===")
    for name, status, seconds in run.results:
        run.log(f"{name:<14} {status:<50} {seconds:6.0f} s")
    run.log(f"total {time.monotonic() - run.start:.0f} s; files: {', '.join(sorted(p.name for p in run.out.iterdir()))}")
    run.pack()
    failed = [name for name, status, _ in run.results if status.startswith("FAILED")]
    (run.work / "summary.json").write_text(json.dumps({"results": run.results, "failed": failed}, indent=1))
    run.pack()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
