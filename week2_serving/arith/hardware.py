"""The accelerator table (`data/accelerators.json`): bandwidth, peak FLOP/s, memory, price.

Each row carries its source (a datasheet, or the word ESTIMATE and how it was made) and the
date it was recorded. Peak FLOP/s are dense bf16: a datasheet's "with sparsity" figure is
twice what a dense matmul can reach.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace

from week2_serving.arith.model import DATA, check_positive


@dataclass(frozen=True)
class Accelerator:
    key: str
    name: str
    bandwidth: float  # bytes/s
    peak_flops: float  # dense bf16 FLOP/s
    memory: float  # bytes
    price_per_hour: float  # USD, indicative
    source: str
    recorded: str

    def __post_init__(self) -> None:
        for f in ("bandwidth", "peak_flops", "memory", "price_per_hour"):
            check_positive(f, getattr(self, f))

    @property
    def ridge(self) -> float:
        """FLOPs per byte where the two roofs meet: below it a kernel waits on memory."""
        return self.peak_flops / self.bandwidth

    def with_bandwidth(self, bandwidth: float, note: str) -> Accelerator:
        """The same chip with a measured bandwidth (e.g. this CPU's copy rate)."""
        return replace(self, bandwidth=bandwidth, source=f"{self.source}; bandwidth: {note}")


def accelerators() -> dict[str, Accelerator]:
    rows = json.loads((DATA / "accelerators.json").read_text())["accelerators"]
    return {
        key: Accelerator(
            key=key,
            name=r["name"],
            bandwidth=r["bandwidth_gbs"] * 1e9,
            peak_flops=r["bf16_tflops"] * 1e12,
            memory=r["memory_gb"] * 1e9,
            price_per_hour=r["price_per_hour_usd"],
            source=r["source"],
            recorded=r["recorded"],
        )
        for key, r in rows.items()
    }


def get_accelerator(key: str) -> Accelerator:
    table = accelerators()
    if key not in table:
        raise ValueError(f"unknown accelerator {key!r}: use one of {', '.join(table)}")
    return table[key]
