"""Small matplotlib helpers (headless: the Agg backend, PNG files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(
    rows: Sequence[dict],
    x: str,
    ys: Sequence[str],
    path: Path | str,
    title: str = "",
    ylabel: str = "",
    logy: bool = False,
) -> Path:
    """Plot columns `ys` of metric rows against `x` (rows missing a column are skipped)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for y in ys:
        pts = [(r[x], r[y]) for r in rows if r.get(y) is not None and r.get(x) is not None]
        if pts:
            xs, vs = zip(*pts)
            ax.plot(xs, vs, marker="." if len(pts) < 40 else None, label=y)
    ax.set_xlabel(x)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def save(fig: plt.Figure, path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
