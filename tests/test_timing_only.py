"""Timing-only runs (random weights of a real shape, acceptance replayed from a trace of another
pair): token ids folded into the model's vocabulary, and `echo-run validate --random-shape`."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from echo_runtime.cli import main as echo_run  # noqa: E402
from echo_runtime.random_models import SHAPES  # noqa: E402
from echo_runtime.vocab import fold_token_ids  # noqa: E402

TINY_VOCAB = SHAPES["tiny-llama"].vocab_size


def test_fold_is_id_mod_vocab_and_keeps_sentinels():
    ids = np.array([0, 95, 96, 151645, -1])
    assert fold_token_ids(ids, 96).tolist() == [0, 95, 0, 151645 - 96 * (151645 // 96), -1]
    assert fold_token_ids(ids, 128256).tolist() == [0, 95, 96, 151645 - 128256, -1]
    with pytest.raises(ValueError, match="vocab_size"):
        fold_token_ids(ids, 0)


@pytest.fixture(scope="module")
def wide_trace(tmp_path_factory):
    """A trace whose ids (< 500) overflow tiny-llama's 96-row embedding unless folded."""
    from echo_sim.testing import random_trace
    from echo_sim.traces.format import write_trace

    path = tmp_path_factory.mktemp("trace") / "wide.trace.npz"
    trace = random_trace(np.random.default_rng(5), num_requests=4, width=2, depth=3, vocab=500)
    assert int(trace.target_token.max()) >= TINY_VOCAB
    write_trace(trace, path)
    return path


def test_live_replays_a_trace_with_ids_past_the_vocabulary(wide_trace, capsys):
    argv = ["live", "--random-shape", "tiny-llama", "--trace", str(wide_trace), "--policy", "static",
            "--concurrency", "2", "--hardware", "h200", "--model", "llama-3.1-8b", "--json"]
    assert echo_run(argv) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["requests"] == 4


def test_validate_random_shape_is_timing_only_and_replays_exactly(wide_trace, tmp_path, capsys):
    cal = tmp_path / "cal.json"
    assert echo_run(["calibrate", "--random-shape", "tiny-llama", "--batch-sizes", "1,2", "--tokens-per-request", "1,4",
                     "--kv-lens", "16", "--draft-depths", "2", "--curve-tokens", "2", "--prefill-tokens", "8",
                     "--repeats", "1", "--warmup", "0", "--overhead-steps", "2", "--out", str(cal)]) == 0
    out = tmp_path / "val"
    argv = ["validate", "--random-shape", "tiny-llama", "--trace", str(wide_trace), "--requests-per-client", "2",
            "--policies", "ar,echo", "--concurrency", "1,2", "--calibration", str(cal), "--out", str(out), "--json"]
    assert echo_run(argv) == 0
    rows = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["rows"]
    assert [(r["policy"], r["concurrency"]) for r in rows] == [("ar", 1), ("ar", 2), ("echo", 1), ("echo", 2)]
    for row in rows:   # same replay in both: acceptance identical, outputs = the folded trace tokens
        assert row["outputs_match_trace"] and row["mat_error_pct"] == 0.0, row
        assert np.isfinite(row["throughput_error_pct"]), row
    assert any(r["mat_measured"] > 1.2 for r in rows)
    summary = json.loads((out / "validation.json").read_text())
    assert "--random-shape tiny-llama" in summary["command"] and "--requests-per-client 2" in summary["command"]


@pytest.mark.parametrize("argv, message", [
    (["validate", "--random-shape", "tiny-llama"], "--trace"),
    (["validate", "--requests-per-client", "2"], "--random-shape"),
])
def test_validate_timing_only_bad_input(argv, message, capsys):
    assert echo_run(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
