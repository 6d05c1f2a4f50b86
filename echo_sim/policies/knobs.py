"""Policy knobs: a policy's dataclass init-fields ARE its knobs (one place for name, type, default).

A spec string is `name` or `name:knob=value,knob=value` (e.g. "static:S=5,k=4,N=16",
"echo:budget=fixed,gate=off"). Knob types: int, float, bool (on/off, true/false, yes/no, 1/0)
and Literal[...] choices. A policy's `label` is its canonical spec: the name followed by every
knob whose value differs from the class default, in declaration order, so
`make_policy(p.label).label == p.label`.
"""

from __future__ import annotations

import math
import typing
from dataclasses import fields

from echo_sim.policies.base import PolicyError

_TRUE = ("on", "true", "yes", "1")
_FALSE = ("off", "false", "no", "0")


def knob_table(cls: type) -> dict[str, tuple[object, object]]:
    """{knob: (type, default)} for a policy dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: (hints[f.name], f.default) for f in fields(cls) if f.init}


def describe_type(kind: object) -> str:
    if typing.get_origin(kind) is typing.Literal:
        return "|".join(typing.get_args(kind))
    if kind is bool:
        return "on|off"
    return getattr(kind, "__name__", str(kind))


def format_value(value: object) -> str:
    """A knob value as it is written in a spec (bool -> on/off, float -> shortest repr)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return repr(value) if isinstance(value, float) else str(value)


def allowed_knobs(cls: type) -> str:
    table = knob_table(cls)
    if not table:
        return "none"
    return ", ".join(f"{k} ({describe_type(t)}, default {format_value(d)})" for k, (t, d) in table.items())


def parse_value(policy: str, cls: type, knob: str, text: str) -> object:
    """The typed value of `knob=text`, or PolicyError naming the knob and the allowed knobs."""
    kind, _ = knob_table(cls)[knob]
    value = _convert(kind, text.strip())
    if value is None:
        raise PolicyError(
            f"policy {policy!r}: knob {knob}={text!r} is not {describe_type(kind)}; "
            f"allowed knobs: {allowed_knobs(cls)}"
        )
    return value


def _convert(kind: object, text: str) -> object | None:
    if typing.get_origin(kind) is typing.Literal:
        return text if text in typing.get_args(kind) else None
    if kind is bool:
        low = text.lower()
        return True if low in _TRUE else False if low in _FALSE else None
    try:
        if kind is int:
            return int(text)
        if kind is float:
            value = float(text)
            return value if math.isfinite(value) else None
    except ValueError:
        return None
    raise TypeError(f"unsupported knob type {kind!r}")  # a programming error in a policy class


def parse_knobs(policy: str, cls: type, text: str) -> dict[str, object]:
    """{knob: value} from "a=1,b=2" (empty text -> {})."""
    table = knob_table(cls)
    knobs: dict[str, object] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        if key not in table:
            raise PolicyError(f"policy {policy!r}: unknown knob {key!r}; allowed knobs: {allowed_knobs(cls)}")
        if not sep:
            raise PolicyError(f"policy {policy!r}: knob {key!r} has no value (write {key}=value)")
        if key in knobs:
            raise PolicyError(f"policy {policy!r}: knob {key!r} given twice")
        knobs[key] = parse_value(policy, cls, key, value)
    return knobs


def label_of(policy: object) -> str:
    """Canonical spec string: name plus the knobs that differ from the class defaults."""
    changed = [
        f"{knob}={format_value(getattr(policy, knob))}"
        for knob, (_, default) in knob_table(type(policy)).items()
        if getattr(policy, knob) != default
    ]
    return policy.name + (":" + ",".join(changed) if changed else "")


class KnobbedPolicy:
    """Mixin for policy dataclasses: label, flags note, and a no-op observe."""

    name: typing.ClassVar[str]
    note: typing.ClassVar[str] = ""  # why sglang_flags() is empty or partial, when it is
    needs_future: typing.ClassVar[bool] = False  # reads the target's future output: simulator / trace replay only
    drafter_expands: typing.ClassVar[None] = None  # no expand gate: the drafter forwards every frontier node

    @property
    def label(self) -> str:
        return label_of(self)

    def sglang_flags(self) -> dict[str, object]:
        return {}

    def observe(self, outcome) -> None:  # most policies learn nothing
        return None


def check_range(policy: str, knob: str, value: float, low: float, high: float = math.inf) -> None:
    """PolicyError unless low <= value <= high."""
    if not low <= value <= high:
        bound = f">= {format_value(low)}" if high == math.inf else f"in [{low}, {high}]"
        raise PolicyError(f"policy {policy!r}: knob {knob}={format_value(value)} must be {bound}")
