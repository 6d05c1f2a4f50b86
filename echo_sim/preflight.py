"""Everything that can make a simulation fail, checked before a command writes its first byte.

`check_point(config, trace)` builds the simulation without running it (trace, workload, policy,
cost model and KV capacity are all checked there: echo_sim.engine.build_simulation) and adds what
only shows once steps are costed or drafted:
- a drafting policy with a calibration that timed no draft (fit.draft null);
- a tree draft deeper or wider than the trace's lattices (the engine clamps it, which would run
  another shape than the label and the SGLang flags say): refused when the spec asks for it
  (static:S=100), a note saying what runs when it is a default (static's S=5 on a depth-3 trace);
- static-adaptive's built-in depth candidates beyond the trace: they run clamped, and say so.
"""

from __future__ import annotations

import sys

from echo_sim.config import SimConfig
from echo_sim.cost.presets import CostModelError
from echo_sim.policies.base import TRACE_LIMIT, PolicyError
from echo_sim.traces.format import TraceSet

DEPTH_KNOBS, WIDTH_KNOBS = {"S", "S_max"}, {"k"}  # the knobs that set a tree draft's depth / width
_noted: set[tuple[str, str, str]] = set()


def check_point(config: SimConfig, trace: TraceSet) -> None:
    from echo_sim.engine import build_simulation

    simulation = build_simulation(config.validate(), trace)
    policy, cost = simulation.policy, simulation.cost
    if policy.draft.depth > 0:
        try:
            cost.draft_time(1, 1, 1)
        except CostModelError as error:
            raise CostModelError(f"policy {config.policy!r} drafts, but {error}") from None
    check_draft_fits_trace(config.policy, policy, trace)


def _note_once(spec: str, trace: TraceSet, text: str) -> None:
    if (spec, trace.source_label, text) not in _noted:
        _noted.add((spec, trace.source_label, text))
        print(f"note: policy {spec!r}: {text}", file=sys.stderr)


def check_draft_fits_trace(spec: str, policy, trace: TraceSet) -> None:
    """A knob the spec sets beyond the trace is refused; a default beyond it (static's S=5 on a
    depth-3 trace) runs clamped, with a note saying what runs."""
    draft = policy.draft
    if draft.depth <= 0 or draft.width == 1 or trace.is_chain_only:
        return  # no draft, or a chain: it replays the spine, whatever its length
    given = {item.split("=", 1)[0].strip() for item in spec.partition(":")[2].split(",") if "=" in item}
    for dimension, knobs, asked, held in (("depth", DEPTH_KNOBS, draft.depth, trace.depth),
                                          ("width", WIDTH_KNOBS, draft.width, trace.width)):
        if asked == TRACE_LIMIT or asked <= held:
            continue
        if given & knobs:
            raise PolicyError(f"policy {spec!r}: draft {dimension} {asked} exceeds the trace's lattices "
                              f"({trace.source_label}: depth {trace.depth}, width {trace.width}); "
                              f"ask for at most {held}")
        _note_once(spec, trace, f"default draft {dimension} {asked} exceeds the trace's {held}; it runs as {held}")
    if policy.name == "static-adaptive":
        from echo_sim.policies.static_adaptive import BUCKET_STEPS

        deepest = max(max(candidates) for candidates, _ in BUCKET_STEPS.values())
        if deepest > trace.depth:
            _note_once(spec, trace, f"depth candidate S={deepest} exceeds the trace's depth {trace.depth}; "
                                    f"it runs as S={trace.depth}")
