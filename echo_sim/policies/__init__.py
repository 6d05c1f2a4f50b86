"""Speculation policies (POLICIES.md): one module per policy, built by name with `make_policy`."""

from echo_sim.policies.base import (
    TRACE_LIMIT,
    DraftShape,
    Outcome,
    Policy,
    PolicyError,
    Selection,
    StepContext,
)
from echo_sim.policies.registry import POLICY_NAMES, make_policy

__all__ = [
    "TRACE_LIMIT",
    "DraftShape",
    "Outcome",
    "Policy",
    "PolicyError",
    "Selection",
    "StepContext",
    "POLICY_NAMES",
    "make_policy",
]
