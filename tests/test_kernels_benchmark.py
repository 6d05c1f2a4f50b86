"""benchmarks/kernels.py: the dry run exercises every section end to end on the kernel device (CPU
under the interpreter here, compiled on a GPU) and its correctness checks hold; without CUDA a real
run fails fast with a clear message and writes nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "kernels.py"


def _run(args, tmp_path, **env):
    return subprocess.run([sys.executable, str(SCRIPT), *args, "--out", str(tmp_path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **env})


def test_dry_run_writes_complete_results(tmp_path):
    done = _run(["--dry-run"], tmp_path)     # inherits conftest's TRITON_INTERPRET choice
    assert done.returncode == 0, done.stderr[-2000:]
    [path] = tmp_path.glob("kernels_dry-run-*.json")
    report = json.loads(path.read_text())
    assert report["dry_run"] and report["command"].startswith("python benchmarks/kernels.py --dry-run")
    assert report["failures"] == []
    assert set(report["ceilings"]) >= {"copy_tb_per_s", "bf16_matmul_tflop_per_s"}
    assert [row["batch"] for row in report["tree_attention"]] == [2]
    for row in report["tree_attention"]:     # every split plan agrees with SDPA on the same inputs
        assert row["rel_err_vs_sdpa"] < row["rel_err_limit"] and row["splits_8_rel_err_vs_sdpa"] < row["rel_err_limit"]
        assert row["default_ms"] > 0 and row["sdpa_ms"] > 0 and row["kv_min"] >= 1
    assert all(row["greedy_matches_reference"] for row in report["tree_verify"])
    assert report["select"][0]["identical_to_numpy"]
    assert "| batch | KV min–max |" in path.with_suffix(".md").read_text()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_gpu_run_without_cuda_fails_fast(tmp_path):
    done = _run([], tmp_path, TRITON_INTERPRET="0")
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr
    assert not any(tmp_path.iterdir())
