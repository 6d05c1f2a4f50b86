"""`echo-sim trace-info`: numbers on a hand-built trace, chain-only traces, bad paths."""

from __future__ import annotations

import json

import numpy as np
import pytest

from echo_sim.cli.main import SUBCOMMANDS, dispatch
from echo_sim.traces.format import write_trace
from test_replay import hand_trace
from test_traces import chain_only_trace


def trace_info(argv, capsys):
    code = dispatch("echo-sim", {"trace-info": SUBCOMMANDS["trace-info"]}, ["trace-info", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_json_on_hand_trace(tmp_path, capsys):
    path = write_trace(hand_trace(), tmp_path / "hand.trace.npz")
    code, out, _ = trace_info([str(path), "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    assert (info["requests"], info["positions"], info["nodes"]) == (2, 7, 28)
    assert (info["draft_model"], info["target_model"], info["width"], info["depth"]) == ("d", "t", 2, 2)
    assert info["source"] == "hand.trace.npz (d -> t)"
    # draft ranks c: 0 0 0 1 0, d: 0 0 -> 6 of 7 positions have the draft's top-1 = target
    assert info["p_draft_top1"] == pytest.approx(6 / 7)
    # chains (test_replay hand walk): k=1 -> 5 tokens / 4 steps; k>=2 -> 5 / 3
    assert info["tau_chain"] == pytest.approx([5 / 4] + [5 / 3] * 7)
    # static N >= 4 selects >= 3 of 4 nodes per lattice: c walks t=1 (+3), t=4 (+1); d t=1 (+1)
    assert info["tau_static"] == pytest.approx({"4": 5 / 3, "8": 5 / 3, "16": 5 / 3, "32": 5 / 3, "64": 5 / 3})
    assert sum(row["nodes"] for row in info["calibration"]) == 28
    assert sum(row["on_path"] for row in info["calibration"]) == 12


def test_text_output_is_a_table(tmp_path, capsys):
    path = write_trace(hand_trace(), tmp_path / "hand.trace.npz")
    code, out, _ = trace_info([str(path)], capsys)
    assert code == 0
    assert "P(draft top-1 = target)  0.857" in out
    assert "1.250   1.667" in out
    assert "calibration" in out and "on-path rate" in out


def test_chain_only_trace_has_null_static_and_calibration(tmp_path, capsys):
    path = write_trace(chain_only_trace(), tmp_path / "chain.trace.npz")
    code, out, _ = trace_info([str(path), "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["nodes"] == 0 and info["chain_only"]
    assert info["tau_static"] is None and info["calibration"] is None
    # a: spine 0 3 2 1 0 5 (L=6), b: 0 1 0 (L=3); k=1: a t=1 +2, t=3 +2, t=5 +1; b t=1 +2 -> 7/4
    assert info["tau_chain"][0] == pytest.approx(7 / 4)
    code, out, _ = trace_info([str(path)], capsys)
    assert "n/a" in out


def test_bad_paths_exit_2_with_one_line(tmp_path, capsys):
    code, out, err = trace_info([str(tmp_path / "missing.trace.npz")], capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "missing.trace.npz" in err
    junk = tmp_path / "junk.trace.npz"
    junk.write_bytes(np.arange(10, dtype=np.uint8).tobytes())
    code, _, err = trace_info([str(junk)], capsys)
    assert code == 2 and "junk.trace.npz" in err and len(err.strip().splitlines()) == 1


def test_beam_inexact_rates_on_hand_lattice(tmp_path, capsys):
    from test_beam import hand_lattice, lattice_trace

    # k=2, S=3; k'=1 meets n0's first child a, which the stored lattice never expanded: both
    # positions are inexact at depth 3; a is on the target's path only at position 0 (y = 1 3)
    trace = lattice_trace([hand_lattice()] * 2, 2, 3, targets=[1, 3])
    path = write_trace(trace, tmp_path / "beam.trace.npz")
    code, out, _ = trace_info([str(path), "--json"], capsys)
    rates = json.loads(out)["beam_inexact"]
    assert code == 0 and list(rates) == ["1"]
    assert rates["1"]["by_depth"] == [0.0, 0.0, 1.0]
    assert rates["1"]["on_path_by_depth"] == [0.0, 0.0, 0.5]
    assert rates["1"]["first_at_level"] == [0.0, 0.0, 1.0]
    code, out, _ = trace_info([str(path)], capsys)
    assert "k'=1" in out and "100.00%" in out and "50.00%" in out
