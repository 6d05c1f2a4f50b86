"""Clocks for the runtime (ARCHITECTURE.md "Clock").

    cuda   CUDA events recorded on the current stream, read after one synchronisation per step
    wall   time.perf_counter
    cpu    time.thread_time: CPU seconds of the calling thread (run with torch threads = 1, so every
           forward computes in this thread). On a machine shared with other jobs, wall time counts
           the slices the scheduler gives to others (measured here: a forward's wall time was 2.0×
           its CPU time under load, and varied 4× between identical calls); CPU time is what the
           step costs on a core of its own, reproducible from one run to the next. `auto` picks
           cuda on a GPU and cpu on a CPU.

A `Stopwatch` marks named points during a step; `laps()` returns the seconds between consecutive
marks. `Clock.now()` gives the run's timeline (request arrivals, first tokens, completions).
"""

from __future__ import annotations

import time

import torch

CLOCKS = ("auto", "cpu", "wall", "cuda")


def resolve_clock(kind: str, device: torch.device | str) -> str:
    cuda = torch.device(device).type == "cuda"
    if kind == "auto":
        return "cuda" if cuda else "cpu"
    if kind not in CLOCKS:
        raise ValueError(f"--clock: unknown clock {kind!r} (choose from {', '.join(CLOCKS)})")
    if (kind == "cuda") != cuda:
        raise ValueError(f"--clock {kind} does not fit device {device}: use cuda on a GPU, cpu or wall on a CPU")
    return kind


class Clock:
    def __init__(self, device: torch.device | str = "cpu", kind: str = "auto") -> None:
        self.kind = resolve_clock(kind, device)

    def now(self) -> float:
        """Seconds now, after the device has finished queued work."""
        if self.kind == "cuda":
            torch.cuda.synchronize()
        return time.thread_time() if self.kind == "cpu" else time.perf_counter()

    def stopwatch(self) -> "Stopwatch":
        return Stopwatch(self)


class Stopwatch:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        if self.clock.kind == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, self.clock.now()))

    def laps(self) -> dict[str, float]:
        """Seconds from each mark to the next, keyed by the later mark's name (summed on repeats)."""
        if self.clock.kind == "cuda":
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for (_, start), (name, end) in zip(self.marks, self.marks[1:]):
            seconds = start.elapsed_time(end) / 1e3 if self.clock.kind == "cuda" else end - start
            out[name] = out.get(name, 0.0) + seconds
        return out

    def total(self) -> float:
        return sum(self.laps().values())
