"""When each request of a run is sent: the arrival process, trace timestamps, conversations.

A run is a list of *chains*: (start offset in seconds from the run's start, request indices).
A chain's requests go one after another, each after the previous one's response ended (plus
the request's think time); chains run side by side. Independent requests are chains of one.

- plain requests: start offsets are the cumulative gaps of the arrival process (`vllm bench
  serve`'s: gamma gaps of mean 1/rate, shape = burstiness; rate = inf sends all at once);
- `TimedRequest`s (trace replay): each one's own `arrival_s`;
- `TurnRequest`s (multi-turn): one chain per conversation, started by the arrival process.
"""

from __future__ import annotations

import math

import numpy as np

from week2_serving.harness.client import Request
from week2_serving.harness.multiturn import TurnRequest
from week2_serving.harness.traces import TimedRequest

Chain = tuple[float, list[int]]


def arrival_intervals(n: int, rate: float, burstiness: float, seed: int = 0) -> np.ndarray:
    """Seconds to wait before each request. Gamma(shape=b, scale=1/(rate·b)): mean 1/rate,
    variance 1/(rate²·b); b = 1 is a Poisson process (exponential gaps). rate = inf: no waits."""
    if math.isinf(rate):
        return np.zeros(n)
    rng = np.random.default_rng(seed)
    return rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)


def chains(requests: list[Request], rate: float, burstiness: float, seed: int = 0) -> list[Chain]:
    """The run's chains, in order of their start offsets."""
    if requests and all(isinstance(r, TimedRequest) for r in requests):
        return sorted(((r.arrival_s, [i]) for i, r in enumerate(requests)), key=lambda c: c[0])
    groups: dict[object, list[int]] = {}
    for i, r in enumerate(requests):
        key = ("conversation", r.conversation) if isinstance(r, TurnRequest) else ("one", i)
        groups.setdefault(key, []).append(i)
    members = list(groups.values())
    for m in members:
        m.sort(key=lambda i: getattr(requests[i], "turn", 0))
    starts = np.cumsum(arrival_intervals(len(members), rate, burstiness, seed))
    return [(float(s), m) for s, m in zip(starts, members)]
