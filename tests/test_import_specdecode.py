"""`echo-sim import-specdecode` on small logs written here (the real data has no licence)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from echo_sim.cli.main import SUBCOMMANDS, dispatch
from echo_sim.traces.import_specdecode import SpecDecodeFormatError, import_specdecode
from echo_sim.traces.replay import replay_chain
from echo_sim.traces.format import read_trace

REQUEST_1 = {"id": "1", "prompt_token_ids": [11, 12, 13], "generated_token_ids": [7] * 8,
             "acc_eagle": {"acc_len": [1, 3, 2, 1, 1, 4, 3, 2]}, "acc_ngram": {"acc_len": [1] * 8}}
REQUEST_2 = {"id": 2, "prompt_token_ids": [5], "generated_token_ids": [7] * 9,  # len differs: ignored
             "acc_eagle": {"acc_len": [1, 2, 1, 5]}, "acc_ngram": {"acc_len": [1, 1, 2, 1]}}


def write_log(path, records, extra_lines=()):
    path.write_text("\n".join([json.dumps(r) for r in records] + list(extra_lines)) + "\n")
    return path


def import_cli(argv, capsys):
    code = dispatch("echo-sim", {"import-specdecode": SUBCOMMANDS["import-specdecode"]},
                    ["import-specdecode", *argv])
    return code, capsys.readouterr()


def test_imports_a_chain_only_trace(tmp_path, capsys):
    log = write_log(tmp_path / "toy.jsonl", [REQUEST_1, REQUEST_2])
    out = tmp_path / "toy.trace.npz"
    code, captured = import_cli([str(log), "--proposer", "eagle", "--out", str(out)], capsys)
    assert code == 0, captured.err
    trace = read_trace(out)
    assert trace.request_ids == ["toy/1", "toy/2"]
    assert trace.output_len.tolist() == [8, 4] and trace.prompt_len.tolist() == [3, 1]
    np.testing.assert_array_equal(trace.spine_run, [0, 2, 1, 0, 0, 3, 2, 1, 0, 1, 0, 4])
    assert trace.is_chain_only and not trace.has_confidences
    assert {"target_token", "draft_rank", "node_cond_prob"} <= set(trace.header["absent_columns"])
    assert "eagle" in trace.source_label and "import-specdecode" in trace.header["command"]


def published_tau(trace, k):
    return replay_chain(trace, k, start=0, cap_at_end=False).tau


def test_replayed_chains_follow_the_published_rules(tmp_path):
    trace = import_specdecode([write_log(tmp_path / "toy.jsonl", [REQUEST_1, REQUEST_2])], "eagle")
    # By hand, walking from index 0 and committing min(acc_len, k+1) with no cap at the end:
    # req 1 acc 1 3 2 1 1 4 3 2; k=1: 1,2,1,1,2,2 (6 steps, 9); k=2: 1,3,1,3 (4, 8); uncapped 1,3,1,4 (4, 9)
    # req 2 acc 1 2 1 5;         k=1: 1,2,2 (3, 5);             k=2: 1,2,3 (3, 6);   uncapped 1,2,5 (3, 8)
    assert published_tau(trace, 1) == pytest.approx(14 / 9)  # Σ tokens ÷ Σ steps, not a mean of means
    assert published_tau(trace, 2) == pytest.approx(14 / 7)
    assert published_tau(trace, None) == pytest.approx(17 / 7)
    # the simulator's own semantics: start at t=1, never past the end (req 1: t=1 +3, t=4 +1, t=5 +3)
    ours = replay_chain(trace, None)
    assert ours.committed_per_request.tolist() == [7, 3]


def test_several_sources_and_ngram(tmp_path):
    first = write_log(tmp_path / "a.jsonl", [REQUEST_1, REQUEST_2])
    second = write_log(tmp_path / "b.jsonl", [REQUEST_1])
    trace = import_specdecode([first, second], "ngram")
    assert trace.request_ids == ["a/1", "a/2", "b/1"]
    # ngram: req 1 all ones (7 steps of 1 after the prefill step), req 2 acc 1 1 2 1: 1,1,2 (3, 4)
    assert published_tau(trace, None) == pytest.approx((8 + 4 + 8) / (8 + 3 + 8))
    assert [s["file"] for s in trace.header["sources"]] == ["a.jsonl", "b.jsonl"]


@pytest.mark.parametrize("bad_line,fragment", [
    ("{not json", "not valid JSON"),
    (json.dumps({"id": "9", "acc_ngram": {"acc_len": [1]}}), "acc_eagle.acc_len: missing"),
    (json.dumps({"id": "9", "acc_eagle": {"acc_len": [1, 0, 2]}}), ">= 1"),
    (json.dumps({"id": "9", "acc_eagle": {"acc_len": [1, 2.5]}}), "integers"),
    (json.dumps({"id": "9", "acc_eagle": {"acc_len": []}}), "non-empty"),
    (json.dumps({"acc_eagle": {"acc_len": [1]}}), "field id"),
])
def test_malformed_lines_name_file_line_and_field(tmp_path, capsys, bad_line, fragment):
    log = write_log(tmp_path / "bad.jsonl", [REQUEST_1], extra_lines=[bad_line])
    out = tmp_path / "out.trace.npz"
    code, captured = import_cli([str(log), "--proposer", "eagle", "--out", str(out)], capsys)
    assert code == 2 and f"{log}:2" in captured.err and fragment in captured.err
    assert not out.exists()


def test_duplicate_ids_missing_file_and_unknown_proposer(tmp_path):
    log = write_log(tmp_path / "dup.jsonl", [REQUEST_1, REQUEST_1])
    with pytest.raises(SpecDecodeFormatError, match="duplicate request id 'dup/1'"):
        import_specdecode([log], "eagle")
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl"):
        import_specdecode([tmp_path / "nowhere.jsonl"], "eagle")
    with pytest.raises(SpecDecodeFormatError, match="unknown proposer 'medusa'"):
        import_specdecode([log], "medusa")
