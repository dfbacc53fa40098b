"""Honest timing: synchronize the accelerator before reading the clock, warm up, repeat.

GPU kernels run asynchronously: without a synchronize, a timer measures how long it took to
*queue* the work. `Timer` and `benchmark` synchronize on entry and exit.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common.device import synchronize
from common.provenance import parse_cpuinfo, provenance


class Timer:
    """Context manager measuring wall time in seconds, synchronizing `device` on both ends.

    >>> with Timer("cpu") as t:
    ...     _ = sum(range(1000))
    >>> t.elapsed > 0
    True
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device) if isinstance(device, str) else device
        self.elapsed = 0.0

    def __enter__(self) -> Timer:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.elapsed = time.perf_counter() - self._start


@dataclass
class BenchStats:
    """Summary of repeated timings, in milliseconds."""

    min_ms: float
    median_ms: float
    p90_ms: float
    mean_ms: float
    repeats: int
    warmup: int

    def to_dict(self) -> dict:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]), the same definition as numpy's default."""
    if not values:
        raise ValueError("percentile of an empty list")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q} is outside [0, 100]")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def benchmark(
    fn: Callable[[], object],
    warmup: int = 3,
    repeats: int = 10,
    device: torch.device | str = "cpu",
) -> BenchStats:
    """Call `fn` `warmup` times untimed, then `repeats` times timed; return ms statistics."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    times_ms = []
    for _ in range(repeats):
        with Timer(device) as t:
            fn()
        times_ms.append(t.elapsed * 1e3)
    return BenchStats(
        min_ms=min(times_ms),
        median_ms=statistics.median(times_ms),
        p90_ms=percentile(times_ms, 90),
        mean_ms=statistics.fmean(times_ms),
        repeats=repeats,
        warmup=warmup,
    )


def _cpu_model() -> str:
    try:
        model, _ = parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        model = None
    return model or platform.processor() or platform.machine()


def environment(
    device: torch.device | str | None = None, server_versions: dict | None = None
) -> dict:
    """What a number was measured on and what produced it: stored next to every result.

    The machine (CPU, cores, threads, GPU) plus `common.provenance.provenance()`: git commit
    and dirty flag, command line, library versions, CPU instruction sets, and for served runs
    the serving engine's version (`server_versions`, from `common.provenance.server_versions`).
    """
    env = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(),
        "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "ci": bool(os.environ.get("CI")),
        **provenance(server_versions=server_versions),
    }
    if device is not None:
        env["device"] = str(device)
    return env
