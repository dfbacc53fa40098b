"""Service-level objectives: terms, how each request is judged, attainment.

An SLO term `ttft_p99:500` says: at least 99% of the requests had a TTFT of at most 500 ms.
Several terms must all hold (`ttft_p99:500 tpot_p99:50`). Each term's share is counted over
*every* request sent, a failed request counting as a miss, and it is judged per request: a
request's TPOT is its own (request-weighted; see tpot_weights.py for the token-weighted one).
Goodput is then the rate of requests that met every term at once.

Capacity (the highest request rate whose run meets the SLO) is searched in capacity_search.py.
"""

from __future__ import annotations

import math
import re
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
