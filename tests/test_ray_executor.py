"""The Ray executor on a local 2-CPU cluster: the same results as the local executor point for point,
the trace travelling through the object store (the workers never read the driver's file), Ctrl-C
cancelling outstanding tasks, and one-line errors when Ray is missing or the cluster unreachable."""

from __future__ import annotations

import socket
import sys
import time

import numpy as np
import pandas as pd
import pytest

from echo_sim.cli import sweep
from echo_sim.cli.main import main
from echo_sim.config import SimConfig
from echo_sim.testing import random_trace
from echo_sim.traces.format import write_trace

ray = pytest.importorskip("ray")
from echo_sim.ray_executor import RayExecutor  # noqa: E402

TIMING = ("sim_cpu_seconds",)


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("trace") / "small.trace.npz"
    write_trace(random_trace(np.random.default_rng(3), num_requests=5, output_len=(8, 20), width=2, depth=3), path)
    return str(path)


@pytest.fixture(scope="module")
def cluster(trace_file):
    executor = RayExecutor(SimConfig(trace=trace_file), num_cpus=2)
    yield executor
    executor.close()


def grid(trace_file, rates=None):
    parser = __import__("argparse").ArgumentParser()
    sweep.add_arguments(parser)
    load = ["--rates", rates] if rates else ["--concurrency", "1,2,4,8,16"]
    args = parser.parse_args(["--trace", trace_file, "--policies", "ar,static,echo,oracle", *load,
                              "--seeds", "0,1", "--requests", "16"])
    return sweep.build_grid(args)


def summary_without_timing(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=list(TIMING)).sort_values("key").reset_index(drop=True)


def test_forty_point_sweep_equals_the_local_executor(trace_file, cluster, tmp_path):
    points = grid(trace_file)
    assert len(points) == 40
    local = sweep.tidy(sweep.run_grid(points, tmp_path / "local", jobs=1))
    # the workers get the trace from the object store: the driver's file may even be gone
    on_ray = sweep.tidy(sweep.run_grid(points, tmp_path / "ray", executor=cluster))
    pd.testing.assert_frame_equal(summary_without_timing(local), summary_without_timing(on_ray))
    assert len(list((tmp_path / "ray" / "points").glob("*.json"))) == 40  # written by the driver


def test_ray_executor_resumes_from_the_same_point_files(trace_file, cluster, tmp_path):
    points = grid(trace_file, rates="20,80")[:6]
    sweep.run_grid(points, tmp_path / "out", jobs=1)
    computed = []

    class Counting:
        def map_unordered(self, compute, tasks):
            tasks = list(tasks)
            computed.extend(tasks)
            yield from cluster.map_unordered(compute, tasks)

    (tmp_path / "out" / "points" / f"{points[2].key}.json").unlink()
    sweep.run_grid(points, tmp_path / "out", executor=Counting())
    assert [p.key for p in computed] == [points[2].key]


def test_interrupt_cancels_outstanding_tasks(cluster):
    def _sleep_unless_first(task):  # nested: Ray ships it by value (the workers cannot import tests/)
        if task:
            time.sleep(60)
        return task

    results = cluster.map_unordered(_sleep_unless_first, [0, 1, 2, 3, 4, 5])
    assert next(results) == (0, 0)
    with pytest.raises(KeyboardInterrupt):
        results.throw(KeyboardInterrupt())
    started = time.monotonic()  # both CPUs would be asleep for 60 s more had the tasks not been cancelled
    assert [r for _, r in cluster.map_unordered(_sleep_unless_first, [0, 0])] == [0, 0]
    assert time.monotonic() - started < 45


def test_unreachable_address_is_one_line_and_writes_nothing(trace_file, tmp_path, capsys):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "out"
    code = main(["sweep", "--trace", trace_file, "--policies", "ar", "--concurrency", "1", "--requests", "4",
                 "--executor", "ray", "--ray-address", f"127.0.0.1:{port}", "--ray-timeout", "2", "--out", str(out)])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(error) == 1 and f"127.0.0.1:{port}: cannot connect within 2 s" in error[0]
    assert not out.exists()


def test_missing_ray_is_one_line(trace_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    code = main(["capacity", "--trace", trace_file, "--slo", "tpot_p99=50ms", "--policies", "ar",
                 "--requests", "20", "--executor", "ray", "--out", str(tmp_path / "out")])
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "Ray is not installed" in error[-1] and "echo-toolkit[ray]" in error[-1]
    assert not (tmp_path / "out").exists()
