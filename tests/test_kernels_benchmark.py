"""benchmarks/kernels.py: the CPU dry run exercises every section end to end; without CUDA a real run
fails fast with a clear message and writes nothing."""

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
    done = _run(["--dry-run"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((tmp_path / "kernels_dry-run.json").read_text())
    assert report["dry_run"] and report["command"].startswith("python benchmarks/kernels.py --dry-run")
    assert set(report["ceilings"]) >= {"copy_tb_per_s", "bf16_matmul_tflop_per_s"}
    assert len(report["tree_attention"]) == 2 and all("flex_ms" in row for row in report["tree_attention"])
    for row in report["tree_attention"]:     # the three implementations agree on the same inputs
        assert row["max_abs_err_vs_sdpa"] < 1e-4, row
    assert all(row["greedy_matches_reference"] for row in report["tree_verify"])
    assert report["select"][0]["identical_to_numpy"]
    assert "| batch | tree | KV |" in (tmp_path / "kernels_dry-run.md").read_text()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_gpu_run_without_cuda_fails_fast(tmp_path):
    done = _run([], tmp_path, TRITON_INTERPRET="0")
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr
    assert not any(tmp_path.iterdir())
