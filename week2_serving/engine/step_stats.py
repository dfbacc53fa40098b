"""The engine thread's own account of a busy period: steps, their time, tokens, idle gaps.

A busy period starts with the first step after the engine had nothing to do and ends when it
has nothing again; a benchmark's measured run (its client keeping requests in flight) is one
such period, the warm-up requests before it are earlier ones. `AsyncEngine` keeps one of these
per period and logs the last one at shutdown, so a benchmark can compare the step time while
serving with the same steps offline (http_profile.py reads the line).
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class BusyPeriod:
    steps: int = 0
    step_seconds: float = 0.0  # inside LLMEngine.step()
    tokens: int = 0  # output tokens the steps produced
    first: float = 0.0  # perf_counter at the first step's start
    last: float = 0.0  # perf_counter at the last step's end

    def add(self, start: float, end: float, tokens: int) -> None:
        if not self.steps:
            self.first = start
        self.steps += 1
        self.step_seconds += end - start
        self.tokens += tokens
        self.last = end

    def summary(self) -> str:
        span = max(self.last - self.first, 1e-9)
        return (
            f"engine thread: {self.steps} steps, mean step {1e3 * self.step_seconds / self.steps:.3f}"
            f" ms, {self.tokens / self.steps:.2f} tokens per step, busy {100 * self.step_seconds / span:.1f}%"
            f" of {span:.2f} s, {self.tokens / span:.1f} tokens/s"
        )


class StepStats:
    """The current busy period and the last finished one."""

    def __init__(self) -> None:
        self.current, self.last = BusyPeriod(), BusyPeriod()

    def step(self, start: float, tokens: int) -> None:
        self.current.add(start, time.perf_counter(), tokens)

    def idle(self) -> BusyPeriod | None:
        """The engine has nothing to do: the busy period that just ended (None: none had)."""
        if not self.current.steps:
            return None
        self.last, self.current = self.current, BusyPeriod()
        return self.last

    def summary(self) -> str | None:
        period = self.current if self.current.steps else self.last
        return period.summary() if period.steps else None
