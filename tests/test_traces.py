"""Trace files: round trips, atomic writes, and one named error per malformed input (TRACES.md)."""

from __future__ import annotations

import json
import time
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest

from echo_sim.testing import random_trace
from echo_sim.traces.format import FILE_SCHEMA, TraceError, TraceSet, read_trace, spine_runs, validate_trace, write_trace

ARRAY_FIELDS = [f.name for f in fields(TraceSet) if f.name not in ("header", "request_ids", "path", "_cache")]


def assert_same_trace(a: TraceSet, b: TraceSet) -> None:
    assert a.header == b.header
    assert list(a.request_ids) == list(b.request_ids)
    for name in ARRAY_FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if x is None or y is None:
            assert x is None and y is None, name
            continue
        assert x.dtype == y.dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)


def chain_only_trace() -> TraceSet:
    """Two requests, spine given directly (as an import of accepted lengths would), no nodes."""
    spine = np.array([0, 3, 2, 1, 0, 5, 0, 1, 0], dtype=np.int32)  # 5 at t=5 reaches past L: allowed
    header = {"format_version": 1, "generator": "test", "draft_model": "d", "target_model": "t",
              "width": 0, "depth": 0, "decoding": "greedy",
              "absent_columns": ["target_token", "draft_rank", "draft_prob", "target_prob",
                                 "node_cond_prob", "node_score"]}
    empty = np.zeros(0)
    return TraceSet(
        header=header, request_ids=["a", "b"], prompt_len=np.array([3, 4], np.int32),
        output_len=np.array([6, 3], np.int32), position_offsets=np.array([0, 6, 9], np.int64),
        target_token=np.full(9, -1, np.int32), draft_rank=np.where(spine > 0, 0, -1).astype(np.int16),
        node_offsets=np.zeros(10, np.int64), node_token=empty.astype(np.int32),
        node_parent=empty.astype(np.int32), node_depth=empty.astype(np.int32),
        node_cond_prob=empty.astype(np.float32), node_score=empty.astype(np.float32),
        node_on_path=empty.astype(bool), spine_run=spine,
    )


@pytest.mark.parametrize("seed", range(4))
def test_random_trace_round_trips_exactly(tmp_path, seed):
    trace = random_trace(np.random.default_rng(seed), num_requests=4, width=3, depth=4)
    path = write_trace(trace, tmp_path / "t.trace.npz")
    loaded = read_trace(path)
    assert_same_trace(trace, loaded)
    assert loaded.path == str(path)
    positions = np.array([0, 3, loaded.num_positions - 1])
    a, b = trace.lattice_batch(positions), loaded.lattice_batch(positions)
    np.testing.assert_array_equal(a.offsets, b.offsets)
    np.testing.assert_array_equal(a.score, b.score)


def test_chain_only_trace_round_trips_with_its_spine(tmp_path):
    trace = chain_only_trace()
    path = write_trace(trace, tmp_path / "c.trace.npz")
    with np.load(path) as archive:
        assert "spine_run" in archive.files and "draft_rank" not in archive.files
        assert "node_cond_prob" not in archive.files  # absent, never NaN-filled
    loaded = read_trace(path)
    assert_same_trace(trace, loaded)
    assert loaded.is_chain_only and not loaded.has_confidences


def test_lattice_trace_derives_its_spine_and_does_not_store_it(tmp_path):
    trace = random_trace(np.random.default_rng(7))
    path = write_trace(trace, tmp_path / "t.trace.npz")
    with np.load(path) as archive:
        assert "spine_run" not in archive.files
    # independent derivation: count draft_rank == 0 forward, per request
    expected = []
    for r in range(trace.num_requests):
        ranks = trace.draft_rank[trace.position_offsets[r]:trace.position_offsets[r + 1]]
        for t in range(len(ranks)):
            run = 0
            while t + run < len(ranks) and ranks[t + run] == 0:
                run += 1
            expected.append(run)
    np.testing.assert_array_equal(read_trace(path).spine_run, expected)


def test_source_label_names_file_and_models(tmp_path):
    trace = random_trace(np.random.default_rng(0))
    loaded = read_trace(write_trace(trace, tmp_path / "x.trace.npz"))
    assert loaded.source_label == "x.trace.npz (random -> random)"
    assert loaded.describe()["source"] == loaded.source_label
    assert trace.source_label.startswith("<in-memory trace>")


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "t.trace.npz"
    good = random_trace(np.random.default_rng(1))
    write_trace(good, path)
    before = path.read_bytes()
    bad_cond = good.node_cond_prob.copy()
    bad_cond[0] = np.nan
    with pytest.raises(TraceError, match="node_cond_prob"):
        write_trace(replace(good, node_cond_prob=bad_cond), path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.trace.npz"]


# ---------------------------------------------------------------- malformed files, written raw here


def raw_members(trace: TraceSet) -> dict:
    """The file's members, built independently of write_trace (so the reader sees them unvalidated)."""
    absent = set(trace.header["absent_columns"])
    members = {"header": json.dumps(trace.header), "request_ids": np.asarray(trace.request_ids)}
    for name, (_, dtype) in FILE_SCHEMA.items():
        if name in absent or name == "spine_run":
            continue
        members[name] = np.asarray(getattr(trace, name)).astype(dtype)
    return members


def write_raw(path: Path, members: dict) -> Path:
    arrays = {k: (np.frombuffer(v.encode(), np.uint8) if isinstance(v, str) else v) for k, v in members.items()}
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture
def base():
    return random_trace(np.random.default_rng(11), num_requests=3, output_len=(6, 9), width=2, depth=3, agreement=0.9)


def node_where(trace: TraceSet, request: int, t: int, node: int) -> int:
    return int(trace.node_offsets[trace.position_offsets[request] + t] + node)


def first_node(trace, predicate):
    """(request, t, local node, global node) of the first node satisfying predicate(global index)."""
    for r in range(trace.num_requests):
        for t in range(trace.output_len[r]):
            p = trace.position_offsets[r] + t
            for g in range(trace.node_offsets[p], trace.node_offsets[p + 1]):
                if predicate(g):
                    return r, t, g - trace.node_offsets[p], g
    raise AssertionError("no such node in the fixture")


def expect_error(tmp_path, members, *fragments):
    path = write_raw(tmp_path / "bad.trace.npz", members)
    with pytest.raises(TraceError) as info:
        read_trace(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def with_header(trace, **changes):
    header = dict(trace.header, **changes)
    return header


def test_wrong_and_missing_format_version(tmp_path, base):
    m = raw_members(base)
    m["header"] = json.dumps(with_header(base, format_version=2))
    expect_error(tmp_path, m, "format_version", "2")
    header = dict(base.header)
    del header["format_version"]
    m["header"] = json.dumps(header)
    expect_error(tmp_path, m, "format_version", "missing")


def test_missing_header_key_and_missing_header(tmp_path, base):
    m = raw_members(base)
    header = dict(base.header)
    del header["draft_model"]
    m["header"] = json.dumps(header)
    expect_error(tmp_path, m, "draft_model", "missing")
    del m["header"]
    expect_error(tmp_path, m, "header")


def test_not_a_trace_file_and_truncated_file(tmp_path, base):
    junk = tmp_path / "junk.trace.npz"
    junk.write_text("hello")
    with pytest.raises(TraceError, match="not a trace file"):
        read_trace(junk)
    good = write_trace(base, tmp_path / "good.trace.npz")
    cut = tmp_path / "cut.trace.npz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(TraceError, match=str(cut)):
        read_trace(cut)
    with pytest.raises(FileNotFoundError, match="nope"):
        read_trace(tmp_path / "nope.trace.npz")


def test_position_offsets_not_monotone(tmp_path, base):
    m = raw_members(base)
    m["position_offsets"] = m["position_offsets"].copy()
    m["position_offsets"][1] = m["position_offsets"][2] + 1
    expect_error(tmp_path, m, "position_offsets", "monotone", f"request '{base.request_ids[1]}'")


def test_output_len_not_matching_offsets(tmp_path, base):
    m = raw_members(base)
    m["output_len"] = m["output_len"].copy()
    m["output_len"][2] += 1
    expect_error(tmp_path, m, "output_len", f"request '{base.request_ids[2]}'")


def test_node_offsets_not_monotone_and_not_starting_at_zero(tmp_path, base):
    m = raw_members(base)
    offsets = m["node_offsets"].copy()
    p = int(base.position_offsets[1] + 2)  # request 1, position 2
    offsets[p + 1] = offsets[p] - 1
    m["node_offsets"] = offsets
    expect_error(tmp_path, m, "node_offsets", "monotone", f"request '{base.request_ids[1]}'", "position 2")
    m["node_offsets"] = base.node_offsets + 1
    expect_error(tmp_path, m, "node_offsets", "start at 0")


@pytest.mark.parametrize("column", ["node_token", "node_on_path", "node_score", "target_token", "draft_prob"])
def test_truncated_arrays(tmp_path, base, column):
    m = raw_members(base)
    m[column] = m[column][:-1]
    expect_error(tmp_path, m, column, "truncated")


def test_parent_not_earlier_in_its_lattice(tmp_path, base):
    m = raw_members(base)
    r, t, j, g = first_node(base, lambda g: base.node_parent[g] >= 0)
    m["node_parent"] = m["node_parent"].copy()
    m["node_parent"][g] = j  # itself
    expect_error(tmp_path, m, "node_parent", "earlier", f"request '{base.request_ids[r]}'", f"position {t}",
                 f"node {j}")


def test_depth_not_parent_depth_plus_one(tmp_path, base):
    m = raw_members(base)
    r, t, j, g = first_node(base, lambda g: base.node_depth[g] == 2)
    m["node_depth"] = m["node_depth"].copy()
    m["node_depth"][g] = 3
    expect_error(tmp_path, m, "node_depth", "parent depth + 1", f"position {t}", f"node {j}")
    m["node_depth"] = base.node_depth.astype(np.uint8)
    r, t, j, g = first_node(base, lambda g: base.node_parent[g] == -1)
    m["node_depth"][g] = 2
    expect_error(tmp_path, m, "node_depth", f"position {t}", f"node {j}")


def test_nodes_not_in_level_order(tmp_path):
    # one request, L=2, y=(5, 6); lattice at t=0 stored as [d1 tok5, d2 tok6 (child of 0), d1 tok9]
    lattice = dict(token=[5, 6, 9], parent=[-1, 0, -1], depth=[1, 2, 1], on_path=[True, True, False])
    trace = TraceSet(
        header={"format_version": 1, "generator": "t", "draft_model": "d", "target_model": "t", "width": 2,
                "depth": 2, "decoding": "greedy", "absent_columns": ["draft_prob", "target_prob"]},
        request_ids=["only"], prompt_len=np.array([1], np.int32), output_len=np.array([2], np.int32),
        position_offsets=np.array([0, 2]), target_token=np.array([5, 6], np.int32),
        draft_rank=np.array([0, -1], np.int16), node_offsets=np.array([0, 3, 3]),
        node_token=np.array(lattice["token"], np.int32), node_parent=np.array(lattice["parent"], np.int32),
        node_depth=np.array(lattice["depth"], np.int32), node_cond_prob=np.full(3, 0.5, np.float32),
        node_score=np.array([0.5, 0.25, 0.5], np.float32), node_on_path=np.array(lattice["on_path"]),
    )
    expect_error(tmp_path, raw_members(trace), "level order", "request 'only'", "position 0", "node 2")
    with pytest.raises(TraceError, match="level order"):
        validate_trace(trace)


@pytest.mark.parametrize("column,value", [("node_cond_prob", 1.5), ("node_score", np.nan), ("draft_prob", -0.1)])
def test_probability_outside_unit_interval_or_nan(tmp_path, base, column, value):
    m = raw_members(base)
    m[column] = m[column].copy()
    m[column][4] = value
    expect_error(tmp_path, m, column, "[0, 1]")


def test_on_path_child_of_off_path_parent(tmp_path, base):
    m = raw_members(base)
    r, t, j, g = first_node(base, lambda g: base.node_on_path[g] and base.node_parent[g] >= 0)
    parent = node_where(base, r, t, base.node_parent[g])
    m["node_on_path"] = m["node_on_path"].copy()
    m["node_on_path"][parent] = False
    expect_error(tmp_path, m, "node_on_path", "off-path parent", f"position {t}", f"node {j}")


def test_on_path_inconsistent_with_target_tokens(tmp_path, base):
    m = raw_members(base)
    r, t, j, g = first_node(base, lambda g: base.node_parent[g] == -1 and not base.node_on_path[g])
    m["node_on_path"] = m["node_on_path"].copy()
    m["node_on_path"][g] = True
    expect_error(tmp_path, m, "node_on_path", "target tokens", f"position {t}", f"node {j}")
    # a node past the output's end is never on-path, even when its token would match
    m = raw_members(base)
    last = int(base.position_offsets[1] - 1)  # request 0, last position
    deep = np.flatnonzero(base.node_depth[base.node_offsets[last]:base.node_offsets[last + 1]] == 2)[0]
    m["node_on_path"] = m["node_on_path"].copy()
    m["node_on_path"][base.node_offsets[last] + deep] = True
    m["node_on_path"][base.node_offsets[last] + base.node_parent[base.node_offsets[last] + deep]] = True
    expect_error(tmp_path, m, "node_on_path", f"request '{base.request_ids[0]}'")


def test_draft_rank_out_of_range(tmp_path, base):
    m = raw_members(base)
    m["draft_rank"] = m["draft_rank"].copy()
    m["draft_rank"][5] = 16
    expect_error(tmp_path, m, "draft_rank", "out of range")


def test_wrong_dtype_missing_column_and_unknown_absent_name(tmp_path, base):
    m = raw_members(base)
    m["node_depth"] = m["node_depth"].astype(np.float32)
    expect_error(tmp_path, m, "node_depth", "float32")
    m = raw_members(base)
    del m["draft_prob"]
    expect_error(tmp_path, m, "draft_prob", "missing")
    m = raw_members(base)
    m["header"] = json.dumps(with_header(base, absent_columns=["confidence"]))
    expect_error(tmp_path, m, "absent_columns")


def test_duplicate_request_ids_and_deeper_than_header(tmp_path, base):
    m = raw_members(base)
    m["request_ids"] = np.asarray([base.request_ids[0]] * base.num_requests)
    expect_error(tmp_path, m, "request_ids", "duplicate")
    m = raw_members(base)
    m["header"] = json.dumps(with_header(base, depth=2))
    expect_error(tmp_path, m, "node_depth", "header depth")


def test_in_memory_spine_must_match_draft_ranks(base):
    wrong = base.spine_run.copy()
    wrong[3] += 1
    with pytest.raises(TraceError, match="spine_run"):
        validate_trace(replace(base, spine_run=wrong))


def test_spine_runs_matches_hand_values():
    ranks = np.array([0, 0, 1, 0, 0, 0, -1, 0])
    np.testing.assert_array_equal(spine_runs(ranks, np.array([0, 5, 8])), [2, 1, 0, 2, 1, 1, 0, 1])


# ------------------------------------------------------------------------------------ load speed


def million_node_trace(rng) -> TraceSet:
    """~1M nodes: one k=4, S=6 lattice shape repeated, random tokens and probabilities (all off-path)."""
    template = random_trace(rng, num_requests=1, output_len=(1, 1), width=4, depth=6)
    size = template.num_nodes
    positions = -(-1_000_000 // size)
    lengths = np.full(positions // 128, 128)
    lengths[-1] += positions - lengths.sum()
    cond = rng.random(positions * size).astype(np.float32)
    return TraceSet(
        header=dict(template.header, absent_columns=["draft_prob", "target_prob"]),
        request_ids=[f"r{i}" for i in range(len(lengths))], prompt_len=np.full(len(lengths), 9, np.int32),
        output_len=lengths.astype(np.int32), position_offsets=np.concatenate(([0], np.cumsum(lengths))),
        target_token=rng.integers(0, 1000, positions).astype(np.int32),
        draft_rank=rng.integers(-1, 16, positions).astype(np.int16),
        node_offsets=np.arange(positions + 1, dtype=np.int64) * size,
        node_token=rng.integers(1000, 150_000, positions * size).astype(np.int32),
        node_parent=np.tile(template.node_parent, positions), node_depth=np.tile(template.node_depth, positions),
        node_cond_prob=cond, node_score=cond * np.float32(0.5), node_on_path=np.zeros(positions * size, bool),
    )


def test_million_nodes_load_and_validate_fast(tmp_path):
    trace = million_node_trace(np.random.default_rng(0))
    path = write_trace(trace, tmp_path / "big.trace.npz")
    start = time.process_time()
    loaded = read_trace(path)
    cpu = time.process_time() - start
    print(f"\nread_trace: {loaded.num_nodes} nodes, {path.stat().st_size / 1e6:.1f} MB, {cpu:.3f} s CPU")
    assert loaded.num_nodes >= 1_000_000
    assert cpu < 5.0  # loose: measured ~0.1 s; the point is "vectorised", not a benchmark
