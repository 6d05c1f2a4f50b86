"""Wall time of one sweep on the local executor vs Ray on a local cluster, and that they agree.

    python benchmarks/sweep_executors.py                 # 200 points, 40 requests each, 2 workers
    python benchmarks/sweep_executors.py --seeds 0,1 --no-write

The grid: all 8 policies x concurrency 1,2,4,8,16 x 5 seeds = 200 points, each a short simulation
(--requests 40 on the shipped MT-Bench trace, h200 / llama-3.1-8b roofline) so the run fits a 2-core
machine shared with others. Both executors get the same number of workers (--jobs): the local
process pool, and a local Ray cluster of that many CPUs. Ray's start-up (cluster + working_dir
upload + trace put) is timed apart from the sweep. Every point is computed fresh (a new --out per
executor). The summaries must be identical but for sim_cpu_seconds; the script fails otherwise.
Result: benchmarks/results/sweep_executors.md (machine, command, date), written atomically.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path


from echo_sim.atomic import write_text_atomic
from echo_sim.cli import sweep
from echo_sim.executor import LocalExecutor

RESULT = Path(__file__).resolve().parent / "results" / "sweep_executors.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--no-write", action="store_true")
    options = parser.parse_args(argv)
    sweep_parser = argparse.ArgumentParser()
    sweep.add_arguments(sweep_parser)
    args = sweep_parser.parse_args(["--concurrency", "1,2,4,8,16", "--seeds", options.seeds,
                                    "--requests", str(options.requests)])
    points = sweep.build_grid(args)
    from echo_sim.ray_executor import RayExecutor

    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        local = sweep.tidy(sweep.run_grid(points, Path(scratch) / "local", executor=LocalExecutor(options.jobs)))
        local_s = time.perf_counter() - started
        started = time.perf_counter()
        ray_executor = RayExecutor(points[0].config, num_cpus=options.jobs)
        startup_s = time.perf_counter() - started
        try:
            started = time.perf_counter()
            on_ray = sweep.tidy(sweep.run_grid(points, Path(scratch) / "ray", executor=ray_executor))
            ray_s = time.perf_counter() - started
        finally:
            ray_executor.close()
    timing = ["sim_cpu_seconds"]
    same = local.drop(columns=timing).sort_values("key").reset_index(drop=True).equals(
        on_ray.drop(columns=timing).sort_values("key").reset_index(drop=True))
    import ray

    text = "\n".join([
        "# Sweep wall time: local process pool vs Ray (local cluster)",
        "",
        f"- command: `python benchmarks/sweep_executors.py --seeds {options.seeds} --requests {options.requests} "
        f"--jobs {options.jobs}`",
        f"- date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; machine: {platform.node()} "
        f"({os.cpu_count()} cores, shared with other jobs), Python {platform.python_version()}, Ray {ray.__version__}",
        f"- grid: {len(points)} points (8 policies x concurrency 1,2,4,8,16 x seeds {options.seeds}), "
        f"{options.requests} requests each, shipped MT-Bench trace, h200 / llama-3.1-8b roofline",
        f"- workers: {options.jobs} local processes vs a local Ray cluster of {options.jobs} CPUs",
        "",
        "| executor | wall time (s) | points/s |",
        "|---|---|---|",
        f"| local (--jobs {options.jobs}) | {local_s:.1f} | {len(points) / local_s:.2f} |",
        f"| ray, sweep only | {ray_s:.1f} | {len(points) / ray_s:.2f} |",
        f"| ray, start-up (cluster, working_dir upload, trace put) | {startup_s:.1f} | |",
        f"| ray, total | {startup_s + ray_s:.1f} | {len(points) / (startup_s + ray_s):.2f} |",
        "",
        f"Ray / local wall-time ratio: {ray_s / local_s:.2f} (sweep only), {(startup_s + ray_s) / local_s:.2f} (with start-up).",
        f"Summaries identical point for point (sim_cpu_seconds aside): {'yes' if same else 'NO'}.",
        "",
    ])
    print(text)
    if not options.no_write:
        write_text_atomic(RESULT, text)
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
