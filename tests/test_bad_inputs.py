"""Bad input is refused with one named error and nothing written (issue 15), per class of input:
fuzzed trace archives, calibration files and workload CSVs (hypothesis), and the sweep's inputs that
used to write points before failing or run another shape than asked."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from echo_sim.cli.main import main
from echo_sim.cli.sweep import parse_policies
from echo_sim.cost.calibration_file import calibration_from_dict, load_calibration
from echo_sim.cost.presets import CostModelError
from echo_sim.paths import TRACES_DIR
from echo_sim.testing import random_trace
from echo_sim.traces.format import TraceError, read_trace, write_trace
from echo_sim.traces.import_specdecode import SpecDecodeFormatError, read_log
from echo_sim.workload import WORKLOAD_FILES, WorkloadError, read_workload

CALIBRATION = TRACES_DIR / "calibration" / "cpu-2core_qwen2.5-coder-1.5b.json"
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@pytest.fixture(scope="module")
def trace_bytes(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "small.trace.npz"
    write_trace(random_trace(np.random.default_rng(3), num_requests=3, output_len=(5, 9), width=2, depth=3), path)
    return path.read_bytes()


# ------------------------------------------------------------------------------------ fuzzing


@FUZZ
@given(data=st.data())
def test_any_corrupted_trace_archive_is_a_trace_error(trace_bytes, tmp_path_factory, data):
    """Byte flips, truncations and splices of a valid archive: read_trace returns a valid trace
    or raises TraceError, never anything else (zipfile/numpy used to leak NotImplementedError,
    tokenize.TokenError, ...)."""
    blob = bytearray(trace_bytes)
    for _ in range(data.draw(st.integers(1, 8), label="flips")):
        at = data.draw(st.integers(0, len(blob) - 1))
        blob[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(blob))), label="truncate")
    path = tmp_path_factory.mktemp("flip") / "bad.trace.npz"
    path.write_bytes(bytes(blob[:cut] if cut is not None else blob))
    try:
        trace = read_trace(path)
    except TraceError as error:
        assert str(path) in str(error)
    else:
        assert trace.num_requests > 0


JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=True),
                      st.text(max_size=5), st.just([]), st.just({}))


@FUZZ
@given(data=st.data())
def test_any_mutated_calibration_is_a_named_error(data):
    """Replace any one field (at any depth) of the shipped calibration by any JSON value: the
    reader accepts it or raises CostModelError naming the file, nothing else."""
    calibration = json.loads(CALIBRATION.read_text())
    node, path = calibration, []
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans(), label="deeper"):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        if not isinstance(node[key], (dict, list)):
            break
        node = node[key]
    target = calibration
    for key in path[:-1]:
        target = target[key]
    if path:
        target[path[-1]] = data.draw(JSON_LEAF, label="value")
    try:
        calibration_from_dict(calibration, "mutated.json")
    except CostModelError as error:
        assert "mutated.json" in str(error)


@FUZZ
@given(text=st.one_of(st.text(max_size=200), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))),
       encode=st.sampled_from(["utf-8", "latin-1", "utf-16"]))
def test_any_workload_csv_is_read_or_a_named_error(tmp_path_factory, text, encode):
    folder = tmp_path_factory.mktemp("workload")
    spec = WORKLOAD_FILES["sharegpt"]
    header = f"{spec.prompt_column},{spec.output_column}\n"
    (folder / spec.file).write_bytes((header + text if text[:1] != "!" else text).encode(encode, "replace"))
    try:
        table = read_workload("sharegpt", folder)
    except WorkloadError as error:
        assert spec.file in str(error)
    else:
        assert len(table) > 0 and (table["prompt_len"] >= 1).all()


# ------------------------------------------------------------------------------ named classes


def test_empty_and_header_only_workload_files_name_the_file(tmp_path):
    spec = WORKLOAD_FILES["sharegpt"]
    for content, problem in ((b"", "empty file"), (f"{spec.prompt_column},{spec.output_column}\n".encode(),
                                                    "header but no rows"), (b"\xff\xfe\x00bad", "not UTF-8")):
        (tmp_path / spec.file).write_bytes(content)
        with pytest.raises(WorkloadError, match=problem) as error:
            read_workload("sharegpt", tmp_path)
        assert str(tmp_path / spec.file) in str(error.value)


def test_zero_request_trace_is_refused(tmp_path):
    trace = random_trace(np.random.default_rng(0), num_requests=1, output_len=(4, 5))
    path = write_trace(trace, tmp_path / "one.trace.npz")
    with np.load(path) as archive:
        members = {name: archive[name] for name in archive.files}
    header = json.loads(members["header"].tobytes())
    empty = {name: (values[:1] if name.endswith("offsets") else values[:0]) for name, values in members.items()
             if name != "header"}
    empty["position_offsets"][:] = 0
    empty["node_offsets"][:] = 0
    np.savez_compressed(tmp_path / "empty.trace.npz", header=members["header"], **empty)
    assert header["format_version"] == 1
    with pytest.raises(TraceError, match="no requests"):
        read_trace(tmp_path / "empty.trace.npz")


def test_all_zero_calibration_fit_is_refused(tmp_path):
    data = json.loads(CALIBRATION.read_text())

    def zero(value):
        if isinstance(value, dict):
            return {k: zero(v) for k, v in value.items()}
        if isinstance(value, list):
            return [zero(v) for v in value]
        return 0.0 if isinstance(value, float) else value

    data["fit"]["verify"], data["fit"]["draft"], data["overhead"] = (
        zero(data["fit"]["verify"]), zero(data["fit"]["draft"]), zero(data["overhead"]))
    path = tmp_path / "zero.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CostModelError, match="fit.verify.*a step must take time"):
        load_calibration(path)


@pytest.mark.parametrize("values, problem", [
    ([1, True, 2], "list of integers"), ([1, 99999999999], "does not fit the trace's int32"),
    ([1, 2**70], "list of integers"),
])
def test_specdecode_counts_are_integers_that_fit(tmp_path, values, problem):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"id": 1, "prompt_token_ids": [1, 2], "acc_eagle": {"acc_len": values}}) + "\n")
    with pytest.raises(SpecDecodeFormatError, match=problem):
        read_log(log, "eagle")


def test_policy_lists_split_on_policy_names_not_knob_commas():
    assert parse_policies("ar,static:S=5,k=4,N=16,echo:budget=fixed,echo") == [
        "ar", "static:S=5,k=4,N=16", "echo:budget=fixed", "echo"]
    assert parse_policies("ar,echo,ar") == ["ar", "echo"]


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory):
    path = tmp_path_factory.mktemp("t") / "small.trace.npz"
    write_trace(random_trace(np.random.default_rng(7), num_requests=6, output_len=(10, 24), width=2, depth=3), path)
    return str(path)


def sweep(trace, out, *extra):
    return main(["sweep", "--trace", trace, "--requests", "8", "--concurrency", "1,2,2", "--out", str(out),
                 "--jobs", "1", "--no-plots", *extra])


def test_sweep_of_knobbed_specs_with_duplicate_loads(small_trace, tmp_path):
    import pandas as pd

    assert sweep(small_trace, tmp_path / "out", "--policies", "ar,static:S=3,k=2,N=6") == 0
    summary = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert sorted(summary["policy"]) == ["ar", "ar", "static:S=3,k=2,N=6", "static:S=3,k=2,N=6"]
    assert sorted(summary["concurrency"]) == [1, 1, 2, 2]


def test_default_knob_beyond_the_trace_runs_clamped_with_a_note(small_trace, tmp_path, capsys):
    assert sweep(small_trace, tmp_path / "out", "--policies", "static") == 0
    assert "note: policy 'static': default draft depth 5 exceeds the trace's 3; it runs as 3" in capsys.readouterr().err


@pytest.mark.parametrize("extra, fragment", [
    (["--policies", "static:S=100"], "draft depth 100 exceeds the trace's lattices"),
    (["--policies", "static:S=3,k=10"], "draft width 10 exceeds"),
    (["--kv-capacity", "10"], "cannot hold simulated request"),
    (["--calibration", "NODRAFT"], "policy 'echo' drafts, but"),
    (["--trace", "GARBAGE"], "not a trace file"),
])
def test_sweep_refuses_before_writing_anything(small_trace, tmp_path, capsys, extra, fragment):
    if "NODRAFT" in extra:
        data = json.loads(CALIBRATION.read_text())
        data["fit"]["draft"] = None
        extra = ["--policies", "ar,echo", "--calibration", str(tmp_path / "nodraft.json")]
        (tmp_path / "nodraft.json").write_text(json.dumps(data))
    if "GARBAGE" in extra:
        (tmp_path / "garbage.trace.npz").write_bytes(b"PK\x03\x04 not really a zip")
        extra = ["--trace", str(tmp_path / "garbage.trace.npz")]
    out = tmp_path / "out"
    assert sweep(small_trace, out, *extra) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and fragment in error[0], error
    assert not out.exists()


def test_kv_capacity_error_names_the_trace_request(small_trace, capsys):
    assert main(["run", "--trace", small_trace, "--policy", "ar", "--concurrency", "1", "--requests", "4",
                 "--kv-capacity", "10"]) == 2
    ids = read_trace(small_trace).request_ids
    assert any(f"trace request {rid!r}" in capsys.readouterr().err for rid in ids)


def test_trace_info_json_is_strict(small_trace, capsys):
    assert main(["trace-info", small_trace, "--json"]) == 0
    json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))


def test_zip_members_with_unknown_compression_are_a_trace_error(small_trace, tmp_path):
    """The 'NotImplementedError: compression type' class, made on purpose."""
    blob = bytearray(open(small_trace, "rb").read())
    at = blob.index(b"PK\x03\x04") + 8  # compression method of the first local header
    blob[at:at + 2] = (99).to_bytes(2, "little")
    central = blob.index(b"PK\x01\x02") + 10
    blob[central:central + 2] = (99).to_bytes(2, "little")
    path = tmp_path / "method99.trace.npz"
    path.write_bytes(bytes(blob))
    assert zipfile.is_zipfile(path)
    with pytest.raises(TraceError, match="not a readable trace file"):
        read_trace(path)
