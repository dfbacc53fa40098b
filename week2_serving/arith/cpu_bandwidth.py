"""This machine's memory bandwidth, from DRAM and from cache, by timing array copies.

One thread copies (numpy's memcpy): torch's `copy_` splits a small copy over its thread pool
and then measures the pool's wake-up more than the memory.

A copy of n bytes reads n and writes n: bandwidth = 2 n / seconds. A large array (hundreds of
MB, far beyond the last-level cache) measures DRAM; a small one (a fraction of L2) copied over
and over stays in cache and measures that. A model whose weights fit in the cache decodes
against the cache's roof, which is why a tiny model on a CPU can beat the DRAM roofline.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from week2_serving.arith.model import check_positive


def cache_sizes() -> dict[str, int]:
    """Per-level data/unified cache sizes in bytes from sysfs (largest instance of each level);
    empty where sysfs does not say (then nothing is claimed about fitting in cache)."""
    out: dict[str, int] = {}
    root = Path("/sys/devices/system/cpu/cpu0/cache")
    for idx in sorted(root.glob("index*")) if root.is_dir() else []:
        try:
            kind = (idx / "type").read_text().strip()
            level = (idx / "level").read_text().strip()
            size = (idx / "size").read_text().strip()
        except OSError:
            continue
        if kind == "Instruction":
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        n = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        out[f"L{level}"] = max(out.get(f"L{level}", 0), n)
    return out


def copy_bandwidth(n_bytes: int, repeats: int = 5, min_seconds: float = 0.05) -> dict[str, float]:
    """Bytes/s of `np.copyto(dst, src)` (one thread, a plain memcpy) over `n_bytes` arrays.

    Each of `repeats` timings loops enough copies to last about `min_seconds` (a small array
    copies in microseconds). `bytes_per_s` is the best timing, as STREAM reports: on a shared
    machine the other timings include other processes' stalls (median and min say how many)."""
    check_positive("n_bytes", n_bytes, integer=True)
    check_positive("repeats", repeats, integer=True)
    src = np.ones(n_bytes, dtype=np.uint8)  # (n_bytes,)
    dst = np.empty_like(src)
    one = []
    for _ in range(3):  # touch every page, then the fastest single copy sets the loop count
        t0 = time.perf_counter()
        np.copyto(dst, src)
        one.append(time.perf_counter() - t0)
    loops = max(1, min(int(min_seconds / max(min(one), 1e-9)), 1 << 20))
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            np.copyto(dst, src)
        rates.append(2 * n_bytes * loops / (time.perf_counter() - t0))
    rates.sort()
    return {
        "bytes_per_s": rates[-1],
        "median": rates[len(rates) // 2],
        "min": rates[0],
        "loops": loops,
    }


def measure_cpu(large_mib: int = 256, small_kib: int = 256, repeats: int = 5) -> dict:
    """DRAM and in-cache copy bandwidth of this machine, with its cache sizes and threads."""
    return {
        "dram": {"array_bytes": large_mib * 2**20, **copy_bandwidth(large_mib * 2**20, repeats)},
        "cache": {"array_bytes": small_kib * 2**10, **copy_bandwidth(small_kib * 2**10, repeats)},
        "cache_sizes": cache_sizes(),
        "cpu_count": os.cpu_count(),
    }
