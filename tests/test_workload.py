"""Request streams: real workload files, seeded sampling, arrivals, and clear errors."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd
import pytest

from echo_sim.workload import (WORKLOAD_FILES, WORKLOADS_DIR, WorkloadError, balanced_draw, build_stream,
                               read_workload)

TRACE_PROMPTS = np.array([11, 22, 33])
TRACE_OUTPUTS = np.array([5, 6, 7])


def stream(workload="trace", requests=10, seed=0, **kw):
    return build_stream(workload, requests, seed, TRACE_PROMPTS, TRACE_OUTPUTS, **kw)


def test_shipped_files_match_their_recorded_sha256():
    table = (WORKLOADS_DIR / "SOURCES.md").read_text()
    for spec in WORKLOAD_FILES.values():
        row = next(line for line in table.splitlines() if spec.file in line)
        recorded = re.findall(r"\b[0-9a-f]{64}\b", row)[0]
        assert hashlib.sha256((WORKLOADS_DIR / spec.file).read_bytes()).hexdigest() == recorded


def test_unknown_workload_lists_known_names():
    with pytest.raises(WorkloadError, match="known: trace, sharegpt, azure-conv"):
        stream("nope")


def test_balanced_draw_uses_every_row_before_repeating():
    draw = balanced_draw(np.random.default_rng(0), 7, 24)
    counts = np.bincount(draw, minlength=7)
    assert counts.min() == 3 and counts.max() == 4
    assert sorted(draw[:7]) == list(range(7))


def test_trace_workload_uses_the_trace_lengths():
    s = stream("trace", requests=9)
    assert np.array_equal(s.prompt_len, TRACE_PROMPTS[s.trace_request])
    assert np.array_equal(s.output_len, TRACE_OUTPUTS[s.trace_request])
    assert np.array_equal(np.bincount(s.trace_request), [3, 3, 3])
    assert s.arrival is None  # closed loop: arrivals are decided by the engine


def test_same_seed_same_stream_other_seed_other_stream():
    a, b, c = stream("sharegpt", 50, seed=1), stream("sharegpt", 50, seed=1), stream("sharegpt", 50, seed=2)
    assert np.array_equal(a.output_len, b.output_len) and np.array_equal(a.trace_request, b.trace_request)
    assert not np.array_equal(a.output_len, c.output_len)


def test_sharegpt_lengths_are_rows_of_the_real_file():
    raw = pd.read_csv(WORKLOADS_DIR / WORKLOAD_FILES["sharegpt"].file)
    s = stream("sharegpt", len(raw))
    # all rows used once: the sampled pairs are exactly the file's pairs
    pairs = sorted(zip(s.prompt_len.tolist(), s.output_len.tolist()))
    assert pairs == sorted(zip(raw["num_prefill_tokens"], raw["num_decode_tokens"]))
    assert s.output_len.mean() == pytest.approx(438.7, abs=0.1)  # SOURCES.md: output mean 439


def test_poisson_arrivals_have_the_asked_rate():
    s = stream("trace", 20000, arrival_mode="poisson", rate=50.0)
    gaps = np.diff(np.concatenate(([0.0], s.arrival)))
    assert (gaps > 0).all()
    assert gaps.mean() == pytest.approx(1 / 50.0, rel=0.03)


def test_poisson_arrivals_are_one_unit_rate_sequence_scaled_by_rate():
    # common random numbers: rate r sees the seed's unit-rate arrivals divided by r
    unit = stream("trace", 500, arrival_mode="poisson", rate=1.0).arrival
    for rate in (0.5, 7.0, 123.0):
        scaled = stream("trace", 500, arrival_mode="poisson", rate=rate).arrival
        assert scaled * rate == pytest.approx(unit, rel=1e-12)
    # unchanged from the former draw (numpy's exponential(1/rate) scales the same draws)
    former = np.cumsum(np.random.default_rng([0, 3]).exponential(1 / 7.0, size=500))
    assert np.array_equal(stream("trace", 500, arrival_mode="poisson", rate=7.0).arrival, former)


def test_replay_uses_real_azure_timestamps():
    s = stream("azure-code", 3, arrival_mode="replay")
    # file rows 1-3: 18:17:03.97996, 18:17:04.03196 (+0.052 s); lengths 4808/10, 3180/8
    assert s.arrival[:2].tolist() == pytest.approx([0.0, 0.052])
    assert s.prompt_len[:2].tolist() == [4808, 3180] and s.output_len[:2].tolist() == [10, 8]
    scaled = stream("azure-conv", 500, arrival_mode="replay", rate=20.0)
    assert 499 / scaled.arrival[-1] == pytest.approx(20.0)
    long = stream("azure-code", 9000, arrival_mode="replay")  # past the file's 8,819 rows
    assert (np.diff(long.arrival) >= 0).all() and long.arrival[-1] > long.arrival[8818]


def test_replay_needs_timestamps():
    with pytest.raises(WorkloadError, match="no arrival times"):
        stream("sharegpt", arrival_mode="replay")


@pytest.mark.parametrize("rate", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_rates_are_rejected(rate):
    with pytest.raises(WorkloadError, match="rate"):
        stream(arrival_mode="poisson", rate=rate)


def test_malformed_file_names_row_and_field(tmp_path):
    spec = WORKLOAD_FILES["sharegpt"]
    (tmp_path / spec.file).write_text("num_prefill_tokens,num_decode_tokens\n10,5\n12,nan\n")
    with pytest.raises(WorkloadError, match=r"row 3, field num_decode_tokens"):
        read_workload("sharegpt", tmp_path)
    (tmp_path / spec.file).write_text("num_prefill_tokens\n10\n")
    with pytest.raises(WorkloadError, match="missing column 'num_decode_tokens'"):
        read_workload("sharegpt", tmp_path)
