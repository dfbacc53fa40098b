"""The roofline plot: attainable FLOP/s against arithmetic intensity, both roofs drawn, with
the decode and prefill steps of a model placed on it."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from common.plots import save  # noqa: E402
from week2_serving.arith.hardware import Accelerator  # noqa: E402
from week2_serving.arith.roofline import Step  # noqa: E402


def plot_roofline(
    acc: Accelerator, points: dict[str, Step], path: Path, title: str = "", cache_bw: float = 0
) -> Path:
    """Log-log roofline of `acc`; each point at (FLOPs/byte, roofline FLOP/s) with its label.

    `cache_bw` > 0 adds a second memory roof (a CPU's cache bandwidth)."""
    lo = min([0.1, *(p.intensity / 2 for p in points.values())])
    hi = max([acc.ridge * 20, *(p.intensity * 2 for p in points.values())])
    xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot(xs, [min(acc.peak_flops, x * acc.bandwidth) for x in xs], "k-", label=acc.name)
    if cache_bw:
        roof = [min(acc.peak_flops, x * cache_bw) for x in xs]
        ax.plot(xs, roof, "k--", label="from cache (measured)")
    ax.axvline(acc.ridge, color="grey", ls=":", lw=1)
    ax.annotate(f"ridge {acc.ridge:.0f} FLOPs/B", (acc.ridge, acc.peak_flops / 30), fontsize=8)
    for label, p in points.items():
        y = p.flops / p.time(acc)
        ax.plot([p.intensity], [y], "o")
        ax.annotate(
            label, (p.intensity, y), textcoords="offset points", xytext=(5, -10), fontsize=8
        )
    ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (FLOPs / byte)")
    ax.set(ylabel="attainable FLOP/s", title=title or f"Roofline: {acc.name}")
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, path)
