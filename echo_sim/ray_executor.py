"""The Ray executor: the same `map_unordered(compute, tasks)` as LocalExecutor, on a Ray cluster.

It only computes, like every executor (echo_sim.executor): the driver receives each record and
writes the point file itself, so resuming, damaged-file handling and the --out lock are the local
ones, and nothing on the cluster needs to see the driver's disk:
- the code reaches the workers as Ray's runtime environment: a working_dir staged from this
  checkout (echo_sim/ and the small traces/workloads, traces/calibration folders), so the workers
  import exactly the driver's version;
- the acceptance trace goes into the object store once (`ray.put`) and each worker process fetches
  it on its first task and keeps it (echo_sim.trace_cache), whatever path the driver read it from;
- Ctrl-C / SIGTERM of the driver cancels every outstanding task (`ray.cancel(force=True)`), and a
  cluster this executor started is shut down with it.
Connecting: `address` None starts a local cluster of `num_cpus`; otherwise it is a running cluster
("HOST:PORT" or "ray://HOST:PORT"), checked with a TCP connection within `connect_timeout` seconds
before Ray is asked (Ray itself can wait far longer on an unreachable address).
Not carried: a --calibration file; give it at the same path on every node.
"""

from __future__ import annotations

import logging
import shutil
import socket
import tempfile
from pathlib import Path

from echo_sim.executor import sigterm_as_interrupt
from echo_sim.paths import REPO_ROOT

DEFAULT_CONNECT_TIMEOUT_S = 10.0
STAGED = (("echo_sim", "echo_sim"), ("traces/workloads", "traces/workloads"),
          ("traces/calibration", "traces/calibration"))
POLL_S = 0.5  # ray.wait timeout: the main thread must wake up for Ctrl-C


class RayExecutorError(ValueError):
    """Ray is not installed, or the cluster cannot be reached; one line saying which and what to do."""


def _import_ray():
    try:
        import ray
    except ImportError:
        raise RayExecutorError("--executor ray: Ray is not installed; pip install 'echo-toolkit[ray]' "
                               "(or pip install ray)") from None
    return ray


def check_reachable(address: str, timeout: float) -> None:
    """A TCP connection to the address's head node within `timeout` s, or a one-line error."""
    if address == "auto":
        return  # Ray finds the local cluster itself (and fails at once if there is none)
    host_port = address.split("://", 1)[-1]
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise RayExecutorError(f"--ray-address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            pass
    except OSError as error:
        raise RayExecutorError(f"--ray-address {address}: cannot connect within {timeout:g} s "
                               f"({error.strerror or error}); is the cluster running (ray start --head)?") from None


def stage_working_dir() -> Path:
    """A temporary folder with what workers need from this checkout (uploaded by Ray)."""
    folder = Path(tempfile.mkdtemp(prefix="echo-sim-ray-"))
    for source, target in STAGED:
        if (REPO_ROOT / source).is_dir():
            shutil.copytree(REPO_ROOT / source, folder / target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return folder


def _run_task(compute, task, trace_option, trace_box):
    """On a worker: install the trace (first task of this process only), then compute."""
    from echo_sim import trace_cache

    if not trace_cache.is_provided(trace_option):
        import ray

        trace_cache.provide(trace_option, ray.get(trace_box[0]))  # boxed: Ray resolves it only here
    return compute(task)


class RayExecutor:
    def __init__(self, trace_config, address: str | None = None, num_cpus: int | None = None,
                 connect_timeout: float = DEFAULT_CONNECT_TIMEOUT_S):
        ray = self._ray = _import_ray()
        if address is not None:
            check_reachable(address, connect_timeout)
        self._staged = stage_working_dir()
        options = dict(runtime_env={"working_dir": str(self._staged)}, include_dashboard=False,
                       logging_level=logging.ERROR, log_to_driver=False)
        try:
            if address is None:
                ray.init(num_cpus=num_cpus, **options)
            else:
                ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as error:
            self._cleanup()
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise RayExecutorError(f"--executor ray: cannot start or join the cluster "
                                   f"({address or 'local'}): {first}") from None
        from echo_sim.trace_cache import trace_for

        self._trace_option = trace_config.trace
        self._trace_box = [ray.put(trace_for(trace_config))]  # into the object store once
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_run_task)

    def map_unordered(self, compute, tasks):
        ray = self._ray
        refs = {self._remote.remote(compute, task, self._trace_option, self._trace_box): task for task in tasks}
        pending = list(refs)
        with sigterm_as_interrupt():
            try:
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1, timeout=POLL_S)
                    for ref in ready:
                        yield refs[ref], ray.get(ref)
            except BaseException:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise

    def close(self) -> None:
        if self._ray.is_initialized():
            self._ray.shutdown()  # disconnects; a cluster started here stops with it
        self._cleanup()

    def _cleanup(self) -> None:
        shutil.rmtree(self._staged, ignore_errors=True)

