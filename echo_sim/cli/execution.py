"""The executor options shared by `echo-sim sweep` and `echo-sim capacity`: where points run.

    --executor local   a process pool on this machine (--jobs workers; echo_sim.executor)
    --executor ray     tasks on a Ray cluster (--ray-address, or a local one; echo_sim.ray_executor)
"""

from __future__ import annotations

import argparse
import contextlib
import os

from echo_sim.executor import LocalExecutor


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    from echo_sim.ray_executor import DEFAULT_CONNECT_TIMEOUT_S

    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="where points run: local worker processes (default) or a Ray cluster")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="local worker processes; with --executor ray and no --ray-address, the CPUs "
                             "of the local Ray cluster started for the run")
    parser.add_argument("--ray-address", default=None,
                        help="running Ray cluster: HOST:PORT, ray://HOST:PORT or auto (default: start a local one)")
    parser.add_argument("--ray-timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT_S,
                        help=f"seconds to wait for --ray-address to answer (default {DEFAULT_CONNECT_TIMEOUT_S:g})")


@contextlib.contextmanager
def open_executor(args: argparse.Namespace, trace_config):
    """The executor the options ask for, closed afterwards. Connecting to Ray happens on entry,
    before the caller writes anything, so an unreachable cluster leaves no output behind."""
    if args.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {args.jobs}")
    if args.executor == "local":
        if args.ray_address is not None:
            raise ValueError("--ray-address needs --executor ray")
        yield LocalExecutor(args.jobs)
        return
    from echo_sim.ray_executor import RayExecutor

    executor = RayExecutor(trace_config, address=args.ray_address, num_cpus=args.jobs,
                           connect_timeout=args.ray_timeout)
    try:
        yield executor
    finally:
        executor.close()
