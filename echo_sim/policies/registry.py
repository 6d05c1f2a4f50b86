"""Policy registry: `make_policy("echo:budget=fixed,gate=off")` -> a fresh policy object.

A spec is a registered name, optionally followed by `:knob=value,...` (knobs.py). Every call
builds a new object with its own state, so sweeps in one process never share anything.
"""

from __future__ import annotations

from echo_sim.policies.ar import ArPolicy
from echo_sim.policies.base import Policy, PolicyError
from echo_sim.policies.dynamic import DynamicPolicy
from echo_sim.policies.echo import EchoPolicy
from echo_sim.policies.goodput import GoodputPolicy
from echo_sim.policies.knobs import parse_knobs
from echo_sim.policies.oracle import OraclePolicy
from echo_sim.policies.static import StaticChainPolicy, StaticPolicy
from echo_sim.policies.static_adaptive import StaticAdaptivePolicy

# Default sweep order: baselines first, then SGLang-style static trees, load-aware ones, echo, ceiling.
POLICIES: dict[str, type] = {
    cls.name: cls
    for cls in (
        ArPolicy,
        StaticChainPolicy,
        StaticPolicy,
        StaticAdaptivePolicy,
        DynamicPolicy,
        GoodputPolicy,
        EchoPolicy,
        OraclePolicy,
    )
}
POLICY_NAMES: tuple[str, ...] = tuple(POLICIES)


def make_policy(spec: str) -> Policy:
    """A new policy from `name` or `name:knob=value,...`; PolicyError names what is wrong."""
    name, _, knob_text = str(spec).strip().partition(":")
    name = name.strip()
    if name not in POLICIES:
        raise PolicyError(f"unknown policy {name!r}; known policies: {', '.join(POLICY_NAMES)}")
    cls = POLICIES[name]
    return cls(**parse_knobs(name, cls, knob_text))
