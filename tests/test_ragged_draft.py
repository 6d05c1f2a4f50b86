"""CostModel.ragged_draft_time: a draft whose levels run different token counts."""

from __future__ import annotations

import numpy as np
import pytest

from echo_sim.cost.model import load_cost_model
from echo_sim.paths import TRACES_DIR

CALIBRATION = TRACES_DIR / "calibration" / "cpu-2core_qwen2.5-coder-1.5b.json"


@pytest.mark.parametrize("source", ["roofline", "calibration"])
def test_uniform_levels_are_draft_time_and_levels_add_up(source):
    cost = load_cost_model() if source == "roofline" else load_cost_model(calibration=CALIBRATION)
    for bs, depth, width in ((1, 6, 4), (16, 3, 2), (64, 5, 1)):
        uniform = [bs] + [bs * width] * (depth - 1)
        assert cost.ragged_draft_time(bs, uniform, 500 * bs) == pytest.approx(
            cost.draft_time(bs, depth, width, kv_tokens=500 * bs), rel=1e-12)
    # a ragged draft: each level costs what a uniform draft's level of that width adds
    bs, kv = 32, 32 * 400
    levels = [bs, 3 * bs, 2 * bs, bs // 2]
    by_level = cost.draft_time(bs, 1, 1, kv_tokens=kv)
    for level, tokens in enumerate(levels[1:], start=2):
        width = tokens / bs
        by_level += float(cost.terms.draft(bs, level, width, kv) - cost.terms.draft(bs, level - 1, width, kv))
    assert cost.ragged_draft_time(bs, levels, kv) == pytest.approx(by_level, rel=1e-9)
    # catch-up tokens in level 1 cost what a bigger level-1 forward costs
    more = cost.ragged_draft_time(bs, [bs + 40] + levels[1:], kv) - cost.ragged_draft_time(bs, levels, kv)
    # (the roofline prices a level by its tokens; a calibration's level keeps its bs request rows)
    bigger = (cost.draft_time(bs + 40, 1, 1, kv_tokens=kv) if source == "roofline"
              else cost.draft_time(bs, 1, 1, kv_tokens=kv, extend_tokens=bs + 40))
    assert more == pytest.approx(bigger - cost.draft_time(bs, 1, 1, kv_tokens=kv))
    assert more > 0


def test_impossible_levels_are_errors():
    from echo_sim.cost.presets import CostModelError

    with pytest.raises(CostModelError):
        load_cost_model().ragged_draft_time(4, [4, 0, 3])


def test_catch_up_tokens_add_tokens_to_level_one_not_request_rows(tmp_path):
    import json

    data = json.loads(CALIBRATION.read_text())
    data["fit"]["draft"]["per_level_request_s"] = 0.01  # a level's cost per request row
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(data))
    cost = load_cost_model(calibration=path)
    curve = cost.terms.fit.draft.level_curve
    bs, kv = 8, 8 * 300
    more = cost.ragged_draft_time(bs, [bs + 6, 2 * bs], kv) - cost.ragged_draft_time(bs, [bs, 2 * bs], kv)
    # 8 requests bring 14 pending tokens: the level runs 14 tokens in the same 8 rows
    assert more == pytest.approx(float(curve([bs + 6])[0] - curve([bs])[0]), rel=1e-9, abs=1e-12)
