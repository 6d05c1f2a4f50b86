"""A parallel sweep under interruption: Ctrl-C and SIGTERM stop it promptly with its finished points
kept, a killed driver leaves no worker behind, and two sweeps never share one --out.

Each test starts a real `echo-sim sweep --jobs 2` in a subprocess on the shipped trace, long
enough that it is mid-run when signalled, and looks at its worker processes through /proc.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")

REPO = Path(__file__).resolve().parent.parent
# ~10 s per point on one core: every point is still running when the test signals
LONG_SWEEP = ["--policies", "ar,echo", "--concurrency", "1,2,4,8", "--requests", "3000", "--jobs", "2", "--no-plots"]


def start_sweep(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, "-m", "echo_sim.cli.main", "sweep", "--out", str(out), *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")  # a zombie has exited


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found.update(int(c) for c in text.split())
    return found


def worker_pids(driver: int, count: int = 2, timeout: float = 60) -> set[int]:
    """The driver's pool workers, once `count` of them are running (spawned interpreters)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = {pid for pid in children(driver)
                   if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()} if alive(driver) else set()
        if len(workers) >= count:
            time.sleep(2)  # let them import and start computing
            return workers
        time.sleep(0.2)
    raise AssertionError(f"no {count} workers appeared under pid {driver}")


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return {p for p in pids if alive(p)}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_stops_parallel_sweep_promptly_without_orphans(tmp_path, signum):
    sweep = start_sweep(tmp_path / "out", *LONG_SWEEP)
    workers = worker_pids(sweep.pid)
    sent = time.monotonic()
    sweep.send_signal(signum)
    _, err = sweep.communicate(timeout=30)
    elapsed = time.monotonic() - sent
    assert elapsed <= 5, f"took {elapsed:.1f} s to stop"
    assert sweep.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert wait_gone(workers, timeout=2) == set(), "workers outlived the driver"


def test_killed_driver_leaves_no_live_worker(tmp_path):
    sweep = start_sweep(tmp_path / "out", *LONG_SWEEP)
    workers = worker_pids(sweep.pid)
    sweep.kill()
    sweep.communicate(timeout=30)
    assert wait_gone(workers, timeout=5) == set(), "workers kept running after SIGKILL of the driver"


def test_second_sweep_on_the_same_out_is_refused(tmp_path):
    out = tmp_path / "out"
    first = start_sweep(out, *LONG_SWEEP)
    try:
        worker_pids(first.pid)
        second = subprocess.run([sys.executable, "-m", "echo_sim.cli.main", "sweep", "--out", str(out),
                                 *LONG_SWEEP], env=dict(os.environ, PYTHONPATH=str(REPO)),
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1 and "another sweep is writing there" in lines[0] and str(first.pid) in lines[0]
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
