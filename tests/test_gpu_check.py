"""benchmarks/gpu_check.sh --dry-run: every driver of the GPU run on tiny shapes on this machine
(CPU under the Triton interpreter here), so the GPU path cannot rot between GPU runs: the
benchmark's checks hold, a calibration is written and loads, the timing-only validation replays
the shipped trace exactly (token ids folded into tiny-llama's 96-id vocabulary), and OUTDIR holds
at most 6 files."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

REPO = Path(__file__).resolve().parents[1]


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dry_run_of_the_whole_script(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), str(out), "--dry-run", "--work", str(work),
                           "--budget-s", "600"], capture_output=True, text=True, timeout=900, env=dict(os.environ))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == sorted(["gpu_check.log", "kernels.json", "kernels.md", "dry-run_tiny-llama.json",
                            "validation.json", "extras.tar.gz"]) and len(files) <= 6
    kernels = json.loads((out / "kernels.json").read_text())
    assert kernels["failures"] == [] and kernels["tree_attention"] and kernels["select"][0]["identical_to_numpy"]
    from echo_sim.cost.model import load_cost_model

    assert load_cost_model(calibration=str(out / "dry-run_tiny-llama.json")).source.startswith("calibration:")
    rows = json.loads((out / "validation.json").read_text())["rows"]
    assert [r["policy"] for r in rows] == ["ar", "static", "echo"]
    for row in rows:
        assert row["outputs_match_trace"] and row["mat_error_pct"] == 0.0, row
    log = (out / "gpu_check.log").read_text()
    summary = json.loads((work / "summary.json").read_text())
    assert summary["failed"] == [], log[-3000:]
    assert [name for name, _, _ in summary["results"]] == ["environment", "kernel tests", "kernels", "calibrate",
                                                           "validate"]


@pytest.mark.parametrize("spec", ["3,2", "17,1"])
def test_warm_up_launch_runs(spec):
    """The warm-up launches (one unsplit and one split variant of the runtime's layout) on the
    kernel device: CPU under the interpreter here."""
    assert _gpu_check_module().warm(spec) == 0
