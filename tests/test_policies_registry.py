"""Registry, knob parsing, labels and SGLang flags of the speculation policies."""

from __future__ import annotations

import numpy as np
import pytest

from echo_sim.policies import POLICY_NAMES, PolicyError, make_policy
from test_policies_support import full_lattices, context, run_step

EXPECTED_NAMES = ("ar", "static-chain", "static", "static-adaptive", "dynamic", "goodput", "echo", "oracle")


def test_every_policy_of_policies_md_is_registered_in_sweep_order():
    assert POLICY_NAMES == EXPECTED_NAMES


@pytest.mark.parametrize("name", EXPECTED_NAMES)
def test_each_policy_has_the_contract_surface(name):
    policy = make_policy(name)
    assert policy.name == name and policy.label == name
    assert policy.draft.depth >= 0 and policy.draft.width >= 1
    assert isinstance(policy.sglang_flags(), dict)
    assert isinstance(policy.note, str)
    if not policy.sglang_flags() and name != "ar":
        assert "not" in policy.note  # says why there is no flag equivalent


def test_unknown_policy_lists_the_known_names():
    with pytest.raises(PolicyError) as error:
        make_policy("eagle9")
    message = str(error.value)
    assert "'eagle9'" in message
    assert all(name in message for name in EXPECTED_NAMES)


@pytest.mark.parametrize(
    "spec, named",
    [
        ("echo:depth=3", "'depth'"),  # unknown knob
        ("static:S=five", "S='five'"),  # ill-typed int
        ("static:S=5.5", "S='5.5'"),  # a float is not an int
        ("dynamic:tau=nan", "tau='nan'"),  # NaN is not a usable float
        ("echo:gate=maybe", "gate='maybe'"),  # bool is on/off
        ("echo:budget=huge", "budget='huge'"),  # not one of the choices
    ],
)
def test_bad_knob_names_itself_and_the_allowed_knobs(spec, named):
    with pytest.raises(PolicyError) as error:
        make_policy(spec)
    message = str(error.value)
    assert named in message
    allowed = {"echo": "tau (float", "static": "N (int", "dynamic": "n_max (int"}[spec.split(":")[0]]
    assert "allowed knobs" in message and allowed in message


@pytest.mark.parametrize(
    "spec, reason",
    [
        ("echo:tau", "has no value"),
        ("echo:tau=0.1,tau=0.2", "given twice"),
        ("static:S=0", "must be >= 1"),
        ("dynamic:tau=1.5", "must be in [0.0, 1.0]"),
        ("ar:S=3", "allowed knobs: none"),
    ],
)
def test_impossible_knob_values_are_errors(spec, reason):
    with pytest.raises(PolicyError, match=None) as error:
        make_policy(spec)
    assert reason in str(error.value)


def test_knob_values_are_typed():
    echo = make_policy("echo: tau=0.3, gate=off, budget=fixed, N=8, S_max=4")
    assert (echo.tau, echo.gate, echo.budget, echo.N, echo.S_max) == (0.3, "off", "fixed", 8, 4)
    assert make_policy("echo:gate=select").gate == "select" and make_policy("echo:bucketing=false").bucketing is False
    static = make_policy("static:S=6,k=8,N=32")
    assert (static.S, static.k, static.N) == (6, 8, 32)
    assert static.draft.depth == 6 and static.draft.width == 8


@pytest.mark.parametrize(
    "spec, label",
    [
        ("static:S=5,k=4,N=16", "static"),  # all defaults -> bare name
        ("static:N=32,S=6", "static:S=6,N=32"),  # declaration order, not spec order
        ("echo:budget=fixed,gate=off", "echo:gate=off,budget=fixed"),
        ("dynamic:tau=0.050,n_max=64", "dynamic"),
        ("dynamic:tau=0.1", "dynamic:tau=0.1"),
        ("static-chain", "static-chain"),
        ("static-chain:S=4", "static-chain:S=4,N=5"),  # a chain verifies S drafts: N = S + 1
        ("static:k=1", "static:k=1,N=6"),
    ],
)
def test_label_is_the_canonical_spec_and_round_trips(spec, label):
    policy = make_policy(spec)
    assert policy.label == label
    assert make_policy(policy.label).label == label


def test_sglang_flags():
    assert make_policy("ar").sglang_flags() == {}
    assert make_policy("static:S=6,k=8,N=32").sglang_flags() == {
        "--speculative-num-steps": 6,
        "--speculative-eagle-topk": 8,
        "--speculative-num-draft-tokens": 32,
    }
    assert make_policy("static-chain").sglang_flags() == {
        "--speculative-num-steps": 3,
        "--speculative-eagle-topk": 1,
        "--speculative-num-draft-tokens": 4,
    }
    for name in ("dynamic", "goodput", "oracle"):
        assert make_policy(name).sglang_flags() == {}
    echo = make_policy("echo:tau=0.3")
    assert echo.sglang_flags() == {"--speculative-echo-threshold": 0.3}
    lattices = full_lattices(1, 3, width=4, depth=5)
    echo.select(lattices, context(lattices))  # the trace's shape becomes known
    assert echo.sglang_flags() == {
        "--speculative-num-steps": 5,
        "--speculative-eagle-topk": 4,
        "--speculative-echo-threshold": 0.3,
    }
    # no gate is ECHO with a threshold nothing falls below (dropping the flag would turn ECHO off)
    assert make_policy("echo:gate=off").sglang_flags()["--speculative-echo-threshold"] == 0.0
    assert make_policy("echo:budget=fixed,N=8").sglang_flags()["--speculative-num-draft-tokens"] == 8


@pytest.mark.parametrize("name", ["static-adaptive", "goodput", "echo"])
def test_every_call_builds_an_independent_object(name):
    lattices = full_lattices(2, 16, width=4, depth=4)
    first, second = make_policy(name), make_policy(name)
    for _ in range(20):
        run_step(first, lattices, context(lattices))
    fresh_policy = make_policy(name)
    fresh = fresh_policy.select(lattices, context(lattices))
    untouched = second.select(lattices, context(lattices))
    assert np.array_equal(fresh.nodes, untouched.nodes)
    assert np.array_equal(fresh.draft_tokens_per_request(lattices), untouched.draft_tokens_per_request(lattices))
    assert second.draft == fresh_policy.draft
