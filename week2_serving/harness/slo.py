"""Service-level objectives, and the search for the highest request rate that meets them.

An SLO term `ttft_p99:500` says: at least 99% of the requests had a TTFT of at most 500 ms.
Several terms must all hold (`ttft_p99:500 tpot_p99:50`). Each term's share is counted over
*every* request sent, a failed request counting as a miss, and it is judged per request: a
request's TPOT is its own (request-weighted; see tpot_weights.py for the token-weighted one).
Goodput is then the rate of requests that met every term at once.

Capacity is the highest request rate (open loop: arrivals do not wait for the server) whose
run meets the SLO. It is found by **bisection over measured points**: bracket it between a
rate that met the SLO and one that missed (the bottom halved until it meets), measure the midpoint, keep the half where the
boundary lies, until the bracket is narrower than `tolerance` (relative) or the probes run
out. The answer is the highest *measured* rate that met it, never an interpolation: every
number reported was measured. The top of the bracket is the saturated rate, the most the
server completes per second: a higher offered rate cannot be sustained (its queue grows for
as long as the load lasts), even if a short run of it still meets a latency bound. Measurements are noisy, so a rate just below the boundary can
miss by chance: bisection then settles lower, which the verification runs (3 at the answer, 3
at 1.25× it) show.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

METRICS = ("ttft", "tpot", "e2el")
TERM = re.compile(r"^(ttft|tpot|e2el)(?:_p(\d+(?:\.\d+)?))?:(\d+(?:\.\d+)?)$")


@dataclass(frozen=True)
class SLOTerm:
    metric: str  # ttft | tpot | e2el
    share: float  # of the requests that must meet it, in (0, 1]
    ms: float  # the bound

    def __str__(self) -> str:
        return f"{self.metric}_p{100 * self.share:g}:{self.ms:g}"


def parse_term(text: str, default_share: float = 0.99) -> SLOTerm:
    """`ttft_p99:500` (99% of requests within 500 ms) or `ttft:500` (the default share)."""
    m = TERM.match(text.strip())
    if not m:
        raise ValueError(
            f"SLO {text!r}: use METRIC_pNN:MS with METRIC one of {', '.join(METRICS)}, "
            "e.g. ttft_p99:500 tpot_p99:50"
        )
    share = float(m.group(2)) / 100 if m.group(2) else default_share
    if not 0 < share <= 1:
        raise ValueError(f"SLO {text!r}: the percentile must be in (0, 100]")
    return SLOTerm(m.group(1), share, float(m.group(3)))


def request_value_ms(req: dict, metric: str) -> float:
    """One request's TTFT, TPOT or E2EL in ms (from a results.json request record); inf if
    it failed."""
    if not req.get("success"):
        return math.inf
    if metric == "ttft":
        return req["ttft"] * 1000
    if metric == "e2el":
        return req["latency"] * 1000
    n = req["output_tokens"]
    return (req["latency"] - req["ttft"]) / (n - 1) * 1000 if n > 1 else 0.0


def attainment(requests: list[dict], terms: list[SLOTerm]) -> dict:
    """Per term the share of requests within its bound, whether every term holds, and the
    share of requests that met all terms at once (goodput's share)."""
    if not requests:
        raise ValueError("no requests to judge against the SLO")
    shares, meets = {}, True
    for t in terms:
        ok = sum(request_value_ms(r, t.metric) <= t.ms for r in requests)
        shares[str(t)] = ok / len(requests)
        meets &= shares[str(t)] >= t.share
    good = sum(all(request_value_ms(r, t.metric) <= t.ms for t in terms) for r in requests)
    return {"meets": bool(meets), "shares": shares, "good_share": good / len(requests)}


@dataclass
class Probe:
    """One measured rate: did it meet the SLO, and its summary numbers."""

    rate: float
    meets: bool
    summary: dict  # attainment and the bench's headline metrics


def bisect_capacity(
    probe: Callable[[float], Probe],
    low: float,
    high: float,
    tolerance: float = 0.05,
    max_probes: int = 8,
) -> dict:
    """Bisection over measured rates between `low` and `high` (requests/s). Returns the
    capacity (highest measured rate that met the SLO; `high` when it meets; None if even
    `low`, halved 3 times, missed) and every probe in the order measured."""
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got low={low}, high={high}")
    probes: list[Probe] = []

    def run(rate: float) -> Probe:
        probes.append(probe(rate))
        return probes[-1]

    missed = None  # a rate known to miss
    while not run(low).meets:  # the bracket's bottom must meet the SLO
        if len(probes) > 3:
            return {"capacity": None, "probes": probes, "why": f"missed even at {low:.3g} req/s"}
        missed, low = low, low / 2
    if missed is not None:
        high = missed
    elif run(high).meets:
        why = (
            "met at the top of the bracket, the saturated rate: throughput, not latency, bounds it"
        )
        return {"capacity": high, "probes": probes, "why": why}
    while high / low - 1 > tolerance and len(probes) < max_probes:
        mid = (low + high) / 2
        low, high = (mid, high) if run(mid).meets else (low, mid)
    why = f"bracket [{low:.3g}, {high:.3g}] req/s after {len(probes)} probes"
    return {"capacity": low, "probes": probes, "why": why}
