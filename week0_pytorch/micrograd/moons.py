"""The two-moons toy set: two interleaving half circles, a classic test of a nonlinear boundary."""

from __future__ import annotations

import math
import random


def make_moons(
    n: int, noise: float = 0.1, seed: int = 0
) -> tuple[list[tuple[float, float]], list[int]]:
    """Two half circles: class 0 on the upper arc around (0, 0), class 1 on the lower arc around
    (1, 0.5). Returns points and labels in {0, 1}, shuffled, with Gaussian noise."""
    if n < 2:
        raise ValueError(f"need at least 2 samples, got n={n}")
    rng = random.Random(seed)
    n0 = n // 2
    pts, labels = [], []
    for i in range(n):
        cls = 0 if i < n0 else 1
        k, m = (i, n0) if cls == 0 else (i - n0, n - n0)
        t = math.pi * k / max(m - 1, 1)
        x, y = (math.cos(t), math.sin(t)) if cls == 0 else (1 - math.cos(t), 0.5 - math.sin(t))
        pts.append((x + rng.gauss(0, noise), y + rng.gauss(0, noise)))
        labels.append(cls)
    order = list(range(n))
    rng.shuffle(order)
    return [pts[i] for i in order], [labels[i] for i in order]
