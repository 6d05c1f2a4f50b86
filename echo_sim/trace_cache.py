"""One acceptance trace per process: read once, reused by every simulation the process runs.

`trace_for(config)` is what `build_simulation` uses when no TraceSet is passed. Locally it reads the
config's trace file the first time and keeps it (keyed by path, size and mtime, so a rewritten file
is read again). A Ray worker has no copy of the driver's files: the Ray executor `provide`s the
TraceSet it fetched from the object store under the config's `trace` value, and that copy is used.
"""

from __future__ import annotations

import os

_provided: dict = {}  # config.trace (None = the shipped trace) -> TraceSet
_read: dict = {}  # (resolved path, size, mtime_ns) -> TraceSet


def provide(trace_option: str | None, trace) -> None:
    """Use `trace` for every config whose `trace` field is `trace_option` (in this process)."""
    _provided[trace_option] = trace


def is_provided(trace_option: str | None) -> bool:
    return trace_option in _provided


def trace_for(config):
    if config.trace in _provided:
        return _provided[config.trace]
    from echo_sim.traces.format import read_trace

    path = config.trace_path()  # raises naming the missing file
    stat = os.stat(path)
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _read:
        _read.clear()  # one trace at a time is what sweeps use; do not pile them up
        _read[key] = read_trace(path)
    return _read[key]
