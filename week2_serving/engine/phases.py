"""Timing an engine step's phases without touching the engine's code.

`instrument(engine, timer)` replaces a few bound methods *on this engine instance* (and
attention's `gather_kv` while the timer is installed) with wrappers that add their wall time
to `timer`. An engine that was never instrumented runs its own methods: no flag to check, no
overhead when profiling is off. Phases nest (forward > attention > gather); each phase's time
is *exclusive*: the time of the phases inside it is counted once, in the inner one.

On a GPU the clock stops only after `torch.cuda.synchronize()` (kernels run asynchronously).
"""

from __future__ import annotations

import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

from week2_serving.engine import attention

# (phase, object path on the engine, method): the order is the plot's stacking order
PHASES = (
    ("schedule", "scheduler", "schedule"),
    ("prepare inputs", "runner", "prepare"),
    ("forward (matmuls, norms, RoPE, KV write)", "runner", "forward"),
    ("attention (SDPA, or the paged op)", "runner", "attention"),
    ("sampling", "", "_sample"),
)
GATHER = "attention (K/V gather)"
REST = "bookkeeping (update, outputs, metrics)"
STEP = "step"


class PhaseTimer:
    """Exclusive seconds per phase; a stack of open phases subtracts inner time from outer."""

    def __init__(self, device: torch.device | None = None, clock: Callable = time.perf_counter):
        self.clock = clock  # seconds; a test passes a fake one
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[float] = []  # per open phase: seconds spent in phases inside it
        self.sync = device is not None and device.type == "cuda"

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.sync:
            torch.cuda.synchronize()
        self.stack.append(0.0)
        start = self.clock()
        try:
            yield
        finally:
            if self.sync:
                torch.cuda.synchronize()
            total = self.clock() - start
            inner = self.stack.pop()
            self.seconds[name] += total - inner
            self.calls[name] += 1
            if self.stack:
                self.stack[-1] += total

    def wrap(self, name: str, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            with self.phase(name):
                return fn(*args, **kwargs)

        return timed


def instrument(engine, timer: PhaseTimer) -> None:
    """Time this engine's phases into `timer` (wrappers set on the instances)."""
    for name, path, method in PHASES:
        obj = getattr(engine, path) if path else engine
        setattr(obj, method, timer.wrap(name, getattr(obj, method)))
    engine.step = timer.wrap(REST, engine.step)  # the step's own lines: update, outputs


@contextmanager
def gather_timed(timer: PhaseTimer) -> Iterator[None]:
    """attention.gather_kv timed while inside this block (module-wide, restored after)."""
    plain = attention.gather_kv
    attention.gather_kv = timer.wrap(GATHER, plain)
    try:
        yield
    finally:
        attention.gather_kv = plain
