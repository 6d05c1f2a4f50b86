"""How fast the machine runs now, against when its calibration was measured.

A CPU shared with other virtual machines does not keep its speed: on the project's 2-core machine
the same verify shape (8 requests × 2 tokens, ΣKV ≈ 750) measured 1.80 s in one validation row and
1.50 s in the next, half an hour later, pinned to one core. A calibration cannot predict a live
run within 5 % across such drift, so `echo-run validate` re-times a few of the calibration's own
grid points before and after every live row (`speed_ratio`): the ratio now / then says how much
of a throughput error is the machine's, not the model's.
"""

from __future__ import annotations

import numpy as np

from echo_runtime.calibrate import Shape, _dtype, shared_caches, time_draft, time_verify
from echo_runtime.timing import Clock

PROBE_TOKENS_PER_REQUEST = (1, 4)


def probe_points(calibration) -> list:
    """The calibration's grid points at its smallest and largest batch, shortest KV, 1 and 4 tokens
    per request (each with its timed draft): 4 points spanning a validation's step shapes."""
    grid = [p for p in calibration.points if not p.prefill and p.draft_batch_size is None and p.draft_s]
    if not grid:
        return []
    sizes = sorted({p.batch_size for p in grid})
    kv = min(p.kv_tokens // p.batch_size for p in grid)
    return [p for p in grid if p.batch_size in (sizes[0], sizes[-1]) and p.kv_tokens == kv * p.batch_size
            and p.verify_tokens // p.batch_size in PROBE_TOKENS_PER_REQUEST]


def speed_ratio(pair, calibration, clock_kind: str, repeats: int = 2) -> float | None:
    """Median over the probe points' verify and draft timings of (seconds now / seconds in the
    calibration); None when the calibration has no such points. < 1: the machine runs faster now."""
    points = probe_points(calibration)
    if not points:
        return None
    clock, rng = Clock(pair.device, clock_kind), np.random.default_rng(0)
    slots = max(p.batch_size for p in points)
    kv = points[0].kv_tokens // points[0].batch_size
    room = max(p.verify_tokens // p.batch_size + (p.draft_depth + 1) * p.draft_width + 2 for p in points)
    target = shared_caches(pair.target.config, {kv: (slots, kv + room)}, _dtype(pair.target), pair.device)[kv]
    draft = shared_caches(pair.draft.config, {kv: (slots, kv + room)}, _dtype(pair.draft), pair.device)[kv]
    measured_then = {}  # shape -> seconds in the calibration (a draft shape can serve two points)
    for p in points:
        measured_then[Shape("verify", p.batch_size, p.verify_tokens // p.batch_size, kv)] = p.verify_s
        measured_then[Shape("draft", p.batch_size, p.draft_depth, kv, p.draft_width)] = p.draft_s
    ratios = []
    for shape, then in measured_then.items():
        timer, cache = (time_verify, target) if shape.kind == "verify" else (time_draft, draft)
        timer(pair, cache, shape, rng, clock)  # warm-up
        ratios.append(np.median([timer(pair, cache, shape, rng, clock) for _ in range(repeats)]) / then)
    return float(np.median(ratios))
