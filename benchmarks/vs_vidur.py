"""Simulator speed side by side with Vidur (microsoft/vidur) on the exact request stream `echo-sim run` draws.

    python benchmarks/vs_vidur.py --vidur /tmp/vidur --vidur-python /tmp/vidur-venv/bin/python
    python benchmarks/vs_vidur.py --vidur /tmp/vidur --requests 1000 --pairs 1 --no-write
    python benchmarks/vs_vidur.py --dry-run            # write the trace CSV and print both commands only

The stream is echo_sim.workload.build_stream's (arxiv lengths by default, seed 0), exported as a
Vidur trace-replay CSV (arrived_at, num_prefill_tokens, num_decode_tokens; every request arrives at
0). Vidur then keeps at most `--batch` requests running, FIFO, which is our closed loop of `--batch`
clients with zero think time: both admit the same requests in the same order.

Each point runs each simulator in a fresh process, in pairs (Vidur, ours, Vidur, ours, ...), so a
shared machine's load hits both alike. Reported per process: CPU seconds of the whole process
("with start-up": interpreter, imports, predictor/trace loading, stream building) and of the
simulation alone (Vidur: Simulator.run(); ours: engine run + metrics, `sim_cpu_seconds`), requests
and iterations per CPU-second, and the ratio ours / Vidur per pair.

What differs (also written into the result):
- Vidur simulates plain decoding only; it has no speculation (no draft, no tree, no acceptance).
  `echo` here is compared with Vidur's plain decoding of the same requests: fewer, costlier steps.
- Step times: Vidur predicts them from profiles (a100 / Meta-Llama-3-8B mlp.csv, linear-regression
  predictor, trained once, then cached); Vidur's snapshot lacks every attention.csv (large files not
  in the stored copy), so this script writes a substitute (A100 roofline for attention, see
  `substitute_attention_csv`). Ours: the h200 / llama-3.1-8b fitted cost model. Simulated seconds
  therefore differ; iteration counts depend only on scheduling and are compared.
- Scheduler: Vidur's Sarathi packs decodes and prefill chunks into one `chunk_size` token budget
  (a decode costs one token of it); ours prefills up to `--chunk` prompt tokens per step beside the
  whole decode batch. Vidur allocates KV blocks as requests grow (given enough blocks here never to
  preempt); ours reserves a request's whole KV at admission (given capacity never to block).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from echo_sim.atomic import write_text_atomic  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
VIDUR_MODEL, VIDUR_DEVICE, VIDUR_NETWORK = "meta-llama/Meta-Llama-3-8B", "a100", "a100_pairwise_nvlink"
BLOCK = 16
MAX_TOKENS = 4096  # longest arxiv request (prompt + output); Vidur's predictor grid must cover it

# Runs inside Vidur's interpreter (cwd = the Vidur checkout): times set-up and run separately and
# counts iterations by Vidur's own batch ids (Batch.generate_id: one per scheduled batch).
VIDUR_DRIVER = r"""
import json, sys, time
from vidur.config import SimulationConfig
from vidur.simulator import Simulator
from vidur.utils.random import set_seeds
from vidur.entities import Batch
config = SimulationConfig.create_from_cli_args()
set_seeds(config.seed)
setup = time.process_time()
simulator = Simulator(config)
setup = time.process_time() - setup
run = time.process_time()
simulator.run()
run = time.process_time() - run
print(json.dumps({"sim_cpu_seconds": run, "setup_cpu_seconds": setup, "iterations": Batch._id + 1,
                  "simulated_seconds": simulator._time}))
"""


def echo_config(policy: str, requests: int, args):
    from echo_sim.config import SimConfig

    return SimConfig(policy=policy, concurrency=args.batch, requests=requests, workload=args.workload,
                     seed=args.seed, max_batch=args.batch, prefill_chunk=args.chunk,
                     kv_capacity_tokens=args.batch * MAX_TOKENS)


def export_stream(requests: int, args, path: Path) -> int:
    """The stream `echo-sim run` draws for this config, as a Vidur trace-replay CSV; returns its length."""
    from echo_sim.traces.format import read_trace
    from echo_sim.workload import build_stream

    config = echo_config("ar", requests, args)
    trace = read_trace(config.trace_path())
    stream = build_stream(config.workload, requests, config.seed, trace.prompt_len, trace.output_len)
    # output_len counts y_0, as Vidur's num_decode_tokens does (prefill completion yields one token)
    table = pd.DataFrame({"arrived_at": np.zeros(requests), "num_prefill_tokens": stream.prompt_len,
                          "num_decode_tokens": stream.output_len})
    if int((table.num_prefill_tokens + table.num_decode_tokens).max()) > MAX_TOKENS:
        raise SystemExit(f"vs_vidur: a request of workload {args.workload!r} exceeds {MAX_TOKENS} tokens")
    table.to_csv(path, index=False)
    return len(table)


def substitute_attention_csv(path: Path) -> None:
    """Vidur's attention profile, which its snapshot lacks, from an A100 roofline (per layer, ms).

    decode: read the batch's KV (2 · kv heads · head dim · 2 bytes per token) at 2.0 TB/s;
    prefill: 4 · chunk · (cached + chunk/2) · q heads · head dim FLOPs at 60 % of 312 TFLOP/s, plus
    its KV read; KV save: write the step's tokens' KV. Each plus 5 µs of launch. Only step times
    depend on these numbers; the schedule (and so the iteration count) does not.
    """
    n_q, n_kv, head, bw, flops = 32, 8, 128, 2.0e12, 0.6 * 312e12
    kv_bytes = 2 * n_kv * head * 2
    rows = []
    kv_grid = list(range(0, MAX_TOKENS + 1, 256))
    for batch in (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256, 320, 384, 512):
        for kv in kv_grid[1:]:
            rows.append((True, batch, kv, 0, 0.0, 1e3 * batch * kv * kv_bytes / bw + 0.005, batch))
    for chunk in (16, 32, 64, 128, 256, 512, 1024, 1536, 2048, 3072, 4096):
        for kv in kv_grid:
            if kv + chunk > MAX_TOKENS + 4096:
                continue
            compute = 4 * chunk * (kv + chunk / 2) * n_q * head / flops
            rows.append((False, 1, kv, chunk, 1e3 * (compute + kv * kv_bytes / bw) + 0.005, 0.0, chunk))
    table = pd.DataFrame(rows, columns=["is_decode", "batch_size", "kv_cache_size", "prefill_chunk_size",
                                        "time_stats.attn_prefill.median", "time_stats.attn_decode.median",
                                        "tokens"])
    table["time_stats.attn_kv_cache_save.median"] = 1e3 * table.pop("tokens") * kv_bytes / bw + 0.002
    for column, value in (("n_embd", 4096), ("n_q_head", n_q), ("n_kv_head", n_kv), ("block_size", BLOCK),
                          ("num_tensor_parallel_workers", 1)):
        table[column] = value
    table.to_csv(path, index=False)


def vidur_command(args, csv: Path, work: Path, attention: Path) -> list[str]:
    predictor = "linear_regression_execution_time_predictor_config"
    vidur = Path(args.vidur or "VIDUR").resolve()
    return [
        args.vidur_python, "-c", VIDUR_DRIVER,
        "--replica_config_model_name", VIDUR_MODEL, "--replica_config_device", VIDUR_DEVICE,
        "--replica_config_network_device", VIDUR_NETWORK,
        "--replica_scheduler_config_type", "sarathi", "--sarathi_scheduler_config_batch_size_cap", str(args.batch),
        "--sarathi_scheduler_config_chunk_size", str(args.chunk),
        "--sarathi_scheduler_config_block_size", str(BLOCK),
        "--sarathi_scheduler_config_num_blocks", str(2 * args.batch * MAX_TOKENS // BLOCK),
        "--request_generator_config_type", "trace_replay", "--trace_request_generator_config_trace_file", str(csv),
        "--trace_request_generator_config_max_tokens", str(MAX_TOKENS),
        "--execution_time_predictor_config_type", "linear_regression",
        f"--{predictor}_attention_input_file", str(attention),
        f"--{predictor}_compute_input_file", str(vidur / f"data/profiling/compute/{VIDUR_DEVICE}/{VIDUR_MODEL}/mlp.csv"),
        f"--{predictor}_prediction_max_batch_size", str(args.batch),
        f"--{predictor}_prediction_max_tokens_per_request", str(MAX_TOKENS),
        f"--{predictor}_prediction_max_prefill_chunk_size", str(args.chunk),
        "--metrics_config_output_dir", str(work / "vidur_out"), "--metrics_config_cache_dir", str(args.cache),
        "--no-metrics_config_store_plots", "--no-metrics_config_write_metrics", "--no-metrics_config_enable_chrome_trace",
    ]


def ours_command(policy: str, requests: int, args) -> list[str]:
    return [sys.executable, __file__, "--ours-one", policy, str(requests), "--workload", args.workload,
            "--seed", str(args.seed), "--batch", str(args.batch), "--chunk", str(args.chunk)]


def ours_one(policy: str, requests: int, args) -> dict:
    """One echo-sim simulation in this process (the same `simulate` `echo-sim run` calls for the policy)."""
    from echo_sim.engine import simulate

    metrics = simulate(echo_config(policy, requests, args)).metrics
    return {"sim_cpu_seconds": metrics["sim_cpu_seconds"], "iterations": metrics["steps"],
            "simulated_seconds": metrics["simulated_seconds"], "mean_batch_size": metrics["mean_batch_size"]}


def timed_process(command: list[str], cwd: Path) -> dict:
    """Run a child; its JSON last line plus the whole process's CPU seconds (user + system)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if out.returncode != 0:
        tail = (out.stderr or out.stdout).strip().splitlines()[-5:]
        raise SystemExit(f"vs_vidur: {command[0]} failed (exit {out.returncode}):\n" + "\n".join(tail))
    # Vidur logs to stdout after the result (at exit): take the driver's JSON line
    record = json.loads(next(line for line in reversed(out.stdout.splitlines()) if line.startswith('{"sim_cpu')))
    record["process_cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return record


def rates(record: dict, requests: int) -> dict:
    for key, cpu in (("sim", record["sim_cpu_seconds"]), ("process", record["process_cpu_seconds"])):
        record[f"requests_per_{key}_cpu_s"] = requests / cpu
        record[f"us_per_iteration_{key}"] = 1e6 * cpu / record["iterations"]
    return record


def machine() -> str:
    try:
        names = [line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")]
    except OSError:
        names = []
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{names[0] if names else platform.machine()}, {os.cpu_count()} logical CPUs (shared; load average "
            f"{load} at the end), Python {platform.python_version()}, numpy {np.__version__}")


def vidur_revision(path: str, given: str | None) -> str:
    out = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return given or out.stdout.strip() or "unknown (not a git checkout; give --vidur-revision)"


def report(record: dict) -> str:
    lines = [f"# Simulator speed side by side with Vidur ({record['date']})", "",
             f"Command: `{record['command']}`  ", f"Machine: {record['machine']}  ",
             f"Vidur: {record['vidur']}  ", f"Stream: {record['stream']}", "",
             "CPU seconds of whole processes (with start-up) and of the simulation alone; ratio = ours / Vidur "
             "requests per CPU-second within one pair (min–max over pairs).", "",
             "| requests | simulator | iterations | sim CPU s | req / sim CPU-s | µs / iteration | process CPU s "
             "| req / process CPU-s | ratio (sim) | ratio (process) |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for point in record["points"]:
        for name, runs in point["runs"].items():
            sim = [r["sim_cpu_seconds"] for r in runs]
            proc = [r["process_cpu_seconds"] for r in runs]
            rsim = [r["requests_per_sim_cpu_s"] for r in runs]
            rproc = [r["requests_per_process_cpu_s"] for r in runs]
            us = [r["us_per_iteration_sim"] for r in runs]
            ratio = point["ratios"].get(name)
            shown = ("—", "—") if ratio is None else tuple(
                f"{min(ratio[k]):.1f}–{max(ratio[k]):.1f}×" for k in ("sim", "process"))
            lines.append(f"| {point['requests']:,} | {name} | {runs[0]['iterations']:,} | {min(sim):.2f}–{max(sim):.2f} "
                         f"| {min(rsim):,.0f}–{max(rsim):,.0f} | {min(us):.0f}–{max(us):.0f} | "
                         f"{min(proc):.2f}–{max(proc):.2f} | {min(rproc):,.0f}–{max(rproc):,.0f} | {shown[0]} | {shown[1]} |")
    lines += ["", "What differs:", ""] + [f"- {line}" for line in record["differences"]]
    return "\n".join(lines) + "\n"


DIFFERENCES = [
    "Vidur models plain decoding only: no speculation (no draft model, no tree, no acceptance). `echo` is "
    "timed against Vidur's plain decoding of the same requests, so it has fewer (costlier) iterations.",
    f"Vidur's step times come from its {VIDUR_DEVICE} / {VIDUR_MODEL} mlp.csv profile with the linear-regression "
    "predictor (trained on the first run, then cached: the timed runs load the cache). The snapshot lacks every "
    "attention.csv (not in the stored copy), so attention times come from a substitute written by this script "
    "(A100 roofline, `substitute_attention_csv`). Ours: h200 / llama-3.1-8b fitted cost model. Simulated "
    "seconds differ; iteration counts depend on the schedule only.",
    "Scheduler: Vidur's Sarathi fills one chunk_size token budget with decodes (one token each) and then "
    "prefill chunks; ours prefills up to --prefill-chunk prompt tokens per step beside the whole decode batch. "
    "Vidur grows KV blocks per request (enough blocks here never to preempt); ours reserves a request's KV "
    "at admission (capacity here never blocks).",
    "Vidur runs with plots, metric files and the chrome trace off (`--no-metrics_config_store_plots "
    "--no-metrics_config_write_metrics --no-metrics_config_enable_chrome_trace`); "
    "its in-run metric collection stays on. Ours: sim CPU includes computing the run's metrics.",
    "Load: every request arrives at 0 in the Vidur CSV and Vidur runs at most batch-cap requests; ours is a "
    "closed loop of the same number of clients with zero think time: the same FIFO admissions.",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vidur", help="path of a microsoft/vidur checkout (never vendored here)")
    parser.add_argument("--vidur-python", default=sys.executable, help="interpreter with Vidur's dependencies")
    parser.add_argument("--vidur-revision", help="Vidur's commit, when --vidur is an exported tree, not a checkout")
    parser.add_argument("--requests", default="1000,10000")
    parser.add_argument("--policies", default="ar,echo")
    parser.add_argument("--pairs", type=int, default=2, help="paired runs per point")
    parser.add_argument("--workload", default="arxiv")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch", type=int, default=256, help="concurrency = batch cap")
    parser.add_argument("--chunk", type=int, default=4096, help="prefill chunk (Vidur: Sarathi chunk_size)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vs_vidur_cache"),
                        help="Vidur's predictor cache (trained on the first run, reused after)")
    parser.add_argument("--dry-run", action="store_true", help="write the stream CSV, print the commands, run nothing")
    parser.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    parser.add_argument("--ours-one", nargs=2, metavar=("POLICY", "REQUESTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ours_one:
        print(json.dumps(ours_one(args.ours_one[0], int(args.ours_one[1]), args)))
        return 0
    if not args.dry_run and not (args.vidur and (Path(args.vidur) / "vidur" / "simulator.py").is_file()):
        parser.error(f"--vidur: not a Vidur checkout: {args.vidur!r} (needs vidur/simulator.py)")
    counts = [int(n) for n in args.requests.split(",")]
    policies = args.policies.split(",")
    work = Path(tempfile.mkdtemp(prefix="vs_vidur_"))
    attention = work / "attention_substitute.csv"
    substitute_attention_csv(attention)
    vidur_dir = Path(args.vidur).resolve() if args.vidur else REPO
    if args.dry_run:
        csv = work / f"stream_{counts[0]}.csv"
        export_stream(counts[0], args, csv)
        print(f"stream: {csv}\nattention substitute: {attention}")
        print("vidur (cwd " + str(vidur_dir) + "): " + " ".join(vidur_command(args, csv, work, attention)[3:]))
        for policy in policies:
            print("ours: " + " ".join(ours_command(policy, counts[0], args)))
        return 0
    warm_csv = work / "warm.csv"
    export_stream(100, args, warm_csv)
    timed_process(vidur_command(args, warm_csv, work, attention), vidur_dir)  # trains and caches the predictor
    points = []
    for requests in counts:
        csv = work / f"stream_{requests}.csv"
        export_stream(requests, args, csv)
        runs: dict[str, list] = {"vidur (plain decoding)": [], **{f"ours {p}": [] for p in policies}}
        for pair in range(args.pairs):
            runs["vidur (plain decoding)"].append(rates(timed_process(vidur_command(args, csv, work, attention),
                                                                      vidur_dir), requests))
            for policy in policies:
                runs[f"ours {policy}"].append(rates(timed_process(ours_command(policy, requests, args), REPO),
                                                    requests))
            print(f"{requests:>7,} pair {pair + 1}: " + ", ".join(
                f"{name} {r[-1]['requests_per_sim_cpu_s']:,.0f} req/sim-CPU-s ({r[-1]['iterations']:,} it)"
                for name, r in runs.items()), flush=True)
        vidur = runs["vidur (plain decoding)"]
        ratios = {f"ours {p}": {k: [o[f"requests_per_{k}_cpu_s"] / v[f"requests_per_{k}_cpu_s"]
                                    for o, v in zip(runs[f"ours {p}"], vidur)] for k in ("sim", "process")}
                  for p in policies}
        points.append({"requests": requests, "runs": runs, "ratios": ratios})
    command = "python benchmarks/vs_vidur.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "command": command.strip(),
              "machine": machine(), "vidur": f"microsoft/vidur {vidur_revision(str(vidur_dir), args.vidur_revision)}, sarathi, "
              f"{VIDUR_DEVICE} / {VIDUR_MODEL}, linear-regression predictor (warm cache)",
              "stream": f"echo_sim.workload.build_stream, workload {args.workload}, seed {args.seed}, "
              f"{args.batch} concurrent (= batch cap), prefill chunk {args.chunk}",
              "differences": DIFFERENCES, "points": points}
    text = report(record)
    print(text)
    if not args.no_write:
        write_text_atomic(RESULTS / "vs_vidur.json", json.dumps(record, indent=1))
        write_text_atomic(RESULTS / "vs_vidur.md", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
