"""benchmarks/fit_cost.py reproduces the committed fitted profiles (slow: a few minutes on 2 cores)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_fit_cost_reproduces_the_shipped_profiles(tmp_path):
    pytest.importorskip("scipy")
    subprocess.run([sys.executable, "benchmarks/fit_cost.py", "--out", str(tmp_path / "fit.md"),
                    "--presets", str(tmp_path / "fitted")], cwd=REPO, check=True, capture_output=True)
    for name in ("a100", "h100", "h200"):
        shipped = json.loads((REPO / "echo_sim/presets/fitted" / f"{name}.json").read_text())["rates"]
        again = json.loads((tmp_path / "fitted" / f"{name}.json").read_text())["rates"]
        assert again.keys() == shipped.keys()
        for key, value in shipped.items():
            assert again[key] == pytest.approx(value, rel=1e-6, abs=1e-12), (name, key)
    assert "held-out **decode**" in (tmp_path / "fit.md").read_text()
