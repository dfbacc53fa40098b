"""Exercise 2's solution, without a server: why bursty arrivals raise p99 TTFT.

    .venv/bin/python -m week2_serving.solutions.ex2_burstiness
    .venv/bin/python -m week2_serving.solutions.ex2_burstiness --rate 8 --service-ms 100

The harness draws open-loop arrival gaps from a gamma distribution (`harness/schedule.py`):
mean 1/rate, shape = burstiness. Feed the same gaps to the simplest server there is, one
request at a time with a fixed service time, and the wait before service (the part of TTFT a
queue adds) follows Lindley's recursion: w[i] = max(0, w[i-1] + service - gap[i]). Same mean
rate, same utilization (rate × service), only the variance of the gaps changes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.cli import parse
from week2_serving.harness.schedule import arrival_intervals


@dataclass
class BurstConfig:
    """Queue waits under Poisson vs bursty arrivals at the same mean rate."""

    rate: float = 8.0  # mean arrivals per second
    service_ms: float = 100.0  # time to serve one request (utilization = rate × service)
    burstiness: tuple[float, ...] = (1.0, 0.25)  # gamma shapes: 1 = Poisson, < 1 burstier
    num_requests: int = 20000  # arrivals per simulated run
    seed: int = 0  # the random draws (the same for every burstiness)

    def __post_init__(self) -> None:
        for name in ("rate", "service_ms", "num_requests"):
            v = getattr(self, name)
            if isinstance(v, bool) or not np.isfinite(v) or v <= 0:
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        if self.rate * self.service_ms / 1000 >= 1:
            raise ValueError(
                f"rate × service = {self.rate * self.service_ms / 1000:.2f} ≥ 1: the queue grows "
                "without bound; lower --rate or --service-ms"
            )
        if any(isinstance(b, bool) or not np.isfinite(b) or b <= 0 for b in self.burstiness):
            raise ValueError(f"every burstiness must be positive and finite, got {self.burstiness}")


def queue_waits(gaps_s: np.ndarray, service_s: float) -> np.ndarray:
    """Wait before service of each request in a one-at-a-time FIFO queue (Lindley)."""
    waits = np.zeros(len(gaps_s))  # (n,) seconds
    for i in range(1, len(gaps_s)):
        waits[i] = max(0.0, waits[i - 1] + service_s - gaps_s[i])
    return waits


def main(cfg: BurstConfig) -> dict:
    service_s = cfg.service_ms / 1000
    rows = {}
    for b in cfg.burstiness:
        gaps = arrival_intervals(cfg.num_requests, cfg.rate, b, cfg.seed)
        waits_ms = 1000 * queue_waits(gaps, service_s)
        rows[b] = {
            "mean_wait_ms": float(waits_ms.mean()),
            "p99_wait_ms": float(np.percentile(waits_ms, 99)),
        }
    print(f"rate {cfg.rate}/s, service {cfg.service_ms} ms: utilization {cfg.rate * service_s:.0%}")
    for b, r in rows.items():
        print(
            f"burstiness {b:5}: mean wait {r['mean_wait_ms']:7.1f} ms, p99 {r['p99_wait_ms']:7.1f} ms"
        )
    return rows


if __name__ == "__main__":
    main(parse(BurstConfig, description=__doc__))
