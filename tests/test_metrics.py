"""metrics.compute_metrics on a hand-made lifecycle; every expected value is worked out by hand below."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from echo_sim.metrics import compute_metrics, percentiles, steady_state_window

# Four requests and seven steps (the first one prefill only).
REQUESTS = pd.DataFrame({
    "request": [0, 1, 2, 3],
    "output_len": [4, 5, 8, 3],
    "arrival": [0.0, 0.0, 4.0, 6.0],
    "first_token": [1.0, 2.0, 5.0, 9.0],
    "finish": [4.0, 6.0, 9.0, 10.0],
    "decode_steps": [2, 2, 3, 1],
    "decode_tokens": [3, 4, 7, 2],
    "accepted_draft": [1, 2, 4, 1],
    "verified_draft": [5, 6, 9, 1],
    "oracle_depth": [2, 3, 5, 1],
})
STEPS = pd.DataFrame({
    "start": [0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 9.0],
    "end": [1.0, 2.0, 4.0, 5.0, 6.0, 9.0, 10.0],
    "batch_size": [0, 1, 1, 1, 2, 2, 1],
    "committed": [0, 2, 1, 3, 4, 5, 1],
    "verify_tokens": [0, 4, 4, 8, 8, 10, 2],
    "padding": [0, 0, 0, 2, 0, 1, 0],
    "draft_time": [0.0, 0.1, 0.1, 0.2, 0.2, 0.3, 0.1],
})


def test_hand_made_lifecycle_concurrency_1():
    m = compute_metrics(REQUESTS, STEPS, concurrency=1)
    # window: 1st completion (t=4) to 3rd (N-C = 3, t=9); steps ending in (4, 9] commit 3+4+5
    assert m["steady_state"] is True
    assert (m["window_start_s"], m["window_end_s"]) == (4.0, 9.0)
    assert m["output_tokens_per_s"] == pytest.approx(12 / 5)
    assert m["requests_per_s"] == pytest.approx(2 / 5)  # completions at 6 and 9
    assert m["makespan_s"] == 10.0
    assert m["makespan_tokens_per_s"] == pytest.approx(20 / 10)  # 4+5+8+3 output tokens
    assert m["makespan_requests_per_s"] == pytest.approx(0.4)
    assert m["mean_accepted_tokens"] == pytest.approx(16 / 8)  # decode tokens / request-steps
    assert m["verified_tokens_per_step"] == pytest.approx(36 / 6)  # decode steps only
    assert m["padding_per_step"] == pytest.approx(3 / 6)
    assert m["mean_batch_size"] == pytest.approx(8 / 6)
    assert m["waste"] == pytest.approx(13 / 21)  # (21 verified - 8 accepted) / 21
    assert m["draft_time_share"] == pytest.approx(1.0 / 10)
    assert m["oracle_accepted_depth"] == pytest.approx(11 / 8)
    assert m["oracle_gap_per_step"] == pytest.approx(3 / 8)
    assert m["steps"] == 7 and m["simulated_seconds"] == 10.0
    # TTFT [1, 2, 1, 3]: sorted 1 1 2 3 -> p50 1.5, p90 at rank 2.7 -> 2.7
    assert (m["ttft_p50"], m["ttft_p90"]) == pytest.approx((1.5, 2.7))
    # TPOT: 3/3, 4/4, 4/7, 1/2 -> sorted 1/2, 4/7, 1, 1 -> p50 = (4/7 + 1) / 2
    assert m["tpot_p50"] == pytest.approx((4 / 7 + 1) / 2)
    # ITL: step durations 1,2,1,1,3,1 seen by 1,1,1,2,2,1 requests -> 1 1 1 1 1 2 3 3
    assert (m["itl_p50"], m["itl_p90"], m["itl_p99"]) == (1.0, 3.0, 3.0)
    assert m["e2e_p50"] == pytest.approx(4.5)  # e2e 4, 6, 5, 4


def test_too_few_requests_fall_back_to_the_whole_run():
    m = compute_metrics(REQUESTS, STEPS, concurrency=2)  # N - C = 2 <= C: no window
    assert m["steady_state"] is False
    assert m["output_tokens_per_s"] == pytest.approx(16 / 10)
    assert math.isnan(m["window_start_s"])


def test_ar_like_run_has_no_waste():
    requests = REQUESTS.assign(verified_draft=0, accepted_draft=0, decode_steps=REQUESTS["decode_tokens"])
    m = compute_metrics(requests, STEPS, concurrency=1)
    assert m["waste"] == 0.0 and m["mean_accepted_tokens"] == 1.0


def test_steady_state_window():
    finish = np.arange(20, 0, -1, dtype=float)  # completions at 1..20, unsorted
    assert steady_state_window(finish, 2) == (2.0, 18.0)
    assert steady_state_window(finish, 10) is None
    assert steady_state_window(finish, 0) is None
    assert steady_state_window(np.full(6, 3.0), 1) is None  # empty interval


def test_open_loop_trims_ten_percent():
    n = 40
    requests = pd.DataFrame({
        "output_len": np.full(n, 3), "arrival": np.arange(n, dtype=float), "first_token": np.arange(n) + 0.5,
        "finish": np.arange(n) + 1.0, "decode_steps": np.full(n, 2), "decode_tokens": np.full(n, 2),
        "accepted_draft": 0, "verified_draft": 0, "oracle_depth": 0,
    })
    steps = pd.DataFrame({"start": np.arange(n) + 0.5, "end": np.arange(n) + 1.0, "batch_size": 1,
                          "committed": 2, "verify_tokens": 1, "padding": 0, "draft_time": 0.0})
    m = compute_metrics(requests, steps, concurrency=None)
    # trim 4: window (4, 36]: 32 steps of 2 tokens in 32 s
    assert (m["window_start_s"], m["window_end_s"]) == (4.0, 36.0)
    assert m["output_tokens_per_s"] == pytest.approx(2.0)


def test_percentiles_of_nothing_are_nan():
    assert all(math.isnan(v) for v in percentiles(np.array([]), "x").values())
