"""Synthetic token ids and lengths: what the generated workloads are made of.

Prompts are random token ids from the tokenizer's vocabulary minus its special tokens (a
special id mid-prompt would end it or change its meaning), sent as ids so the server sees
exactly the lengths drawn here.
"""

from __future__ import annotations

import numpy as np


def lengths(rng: np.random.Generator, mean: int, ratio: float, n: int) -> np.ndarray:
    """`n` lengths uniform in [mean·(1−ratio), mean·(1+ratio)], each at least 1."""
    if mean < 1:
        raise ValueError(f"lengths must be >= 1, got {mean}")
    if not 0 <= ratio < 1:
        raise ValueError(f"range ratio must be in [0, 1), got {ratio}")
    lo, hi = max(1, int(mean * (1 - ratio))), max(1, int(mean * (1 + ratio)))
    return rng.integers(lo, hi + 1, size=n)


def special_ids(tokenizer) -> set[int]:
    return set(getattr(tokenizer, "all_special_ids", []) or [])


def vocabulary(tokenizer) -> np.ndarray:
    """The ids a random prompt may use: every id but the special ones."""
    return np.array(sorted(set(range(len(tokenizer))) - special_ids(tokenizer)))


def random_ids(rng: np.random.Generator, vocab: np.ndarray, n: int) -> list[int]:
    return rng.choice(vocab, size=n).tolist()
