"""Slow: real speculative decoding with the Qwen2.5-Coder pair reproduces the shipped trace's replay.

Runs benchmarks/trace_exactness.py's core on the trace's first request, chain k = 3, first 16
tokens. Needs the real GGUF pair ($ECHO_MODEL_DIR, default models/qwen-coder in the repository, where
`echo-run fetch-models models/qwen-coder` puts it, and $ECHO_MODEL_CACHE, default models/cache); skips, saying why, when the models are absent.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = Path(os.environ.get("ECHO_MODEL_DIR", REPO / "models" / "qwen-coder"))
MODEL_CACHE = os.environ.get("ECHO_MODEL_CACHE", str(REPO / "models" / "cache"))


def _script():
    spec = importlib.util.spec_from_file_location("trace_exactness", REPO / "benchmarks/trace_exactness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_chain_k3_first_request_matches_replay(tmp_path):
    script = _script()
    parser = argparse.ArgumentParser()
    script.add_arguments(parser)
    args = parser.parse_args(["--target", str(MODEL_DIR), "--model-cache", MODEL_CACHE, "--prompts", "1",
                              "--configs", "chain-k3", "--max-new-tokens", "16", "--out", str(tmp_path)])
    try:
        script.check_models(args)
    except script.ModelsMissing as error:
        pytest.skip(f"real Qwen2.5-Coder pair not available: {error}")
    from echo_sim.traces.format import read_trace

    trace = read_trace(args.trace)
    (part,) = script.run_all(args, trace, ["chain-k3"])
    assert part["request_id"] == trace.request_ids[0]
    assert part["steps_live"] >= 4  # 16 tokens at <= 4 per step: a real multi-step comparison
    assert [s[:2] for s in part["live"]] == part["replay"], part["flips"]
    assert part["output_equals_trace"]
    assert part["output_tokens"] == 16
    assert (tmp_path / "trace_exactness.parts" / f"{part['request_id']}_chain-k3.json").is_file()
