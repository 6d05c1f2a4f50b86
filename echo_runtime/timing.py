"""Clocks for the runtime: perf_counter on CPU, CUDA events on GPU (ARCHITECTURE.md "Clock").

A `Stopwatch` marks named points during a step; `laps()` returns the seconds between consecutive
marks. On CUDA the marks are events recorded on the current stream and read after one
synchronisation at the end of the step, so timing does not stall the queue in between.
"""

from __future__ import annotations

import time

import torch


class Stopwatch:
    def __init__(self, device: torch.device | str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def mark(self, name: str) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append((name, event))
        else:
            self.marks.append((name, time.perf_counter()))

    def laps(self) -> dict[str, float]:
        """Seconds from each mark to the next, keyed by the later mark's name (summed on repeats)."""
        if self.cuda:
            torch.cuda.synchronize()
        out: dict[str, float] = {}
        for (_, start), (name, end) in zip(self.marks, self.marks[1:]):
            seconds = start.elapsed_time(end) / 1e3 if self.cuda else end - start
            out[name] = out.get(name, 0.0) + seconds
        return out

    def total(self) -> float:
        return sum(self.laps().values())


def wall_clock(device: torch.device | str) -> float:
    """Seconds now, after the device has finished queued work (request lifecycle times)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()
