"""The search for the highest request rate that meets an SLO, robust to a noisy measurement.

Why not bisection on met / missed: one probe of a few dozen requests judges a p99 by its
slowest request or two, so a rate just below the boundary misses by chance now and then, and
bisection, which trusts every verdict, then settles wherever that chance sent it, on one of
the points it happened to probe. This search instead:

1. **Measures a number, not a verdict.** Each probe yields the *SLO ratio*: for every term the
   request value at the term's share (the ceil(share·n)-th smallest, a failed request counting
   as infinite) divided by its bound; the worst term's ratio. The run meets the SLO exactly
   when the ratio is <= 1, and a probe that misses by 1% is told apart from one that misses by
   10x.
2. **Fits every probe at once.** log(ratio) grows with the offered rate; the probes' values
   are made non-decreasing by a monotone (isotonic) fit, pool-adjacent-violators: a noisy probe
   is averaged with its neighbours instead of overruling them.
3. **Interpolates the boundary.** The next rate to measure is where the fitted curve crosses
   ratio = 1, interpolated linearly between the last fitted point below and the first above
   (regula falsi; when the same side of the bracket was kept twice, the midpoint instead, so
   the bracket keeps shrinking from both sides). It stops when the bracket is narrower than
   `tolerance` (relative) or the probes run out.
4. **Reports with headroom.** The *boundary* is the fitted crossing; the *capacity* reported
   is the boundary less `headroom` (a share), so that a check at the capacity is not a coin
   toss on which side of the boundary the noise falls.

Same arrivals for every probe: the caller measures every rate with one arrival seed, so the
gaps are the same draws scaled by 1/rate (common random numbers), and a ratio that moves from
one rate to the next moved because of the rate, not because the burst pattern changed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence

from week2_serving.harness.slo import Probe, SLOTerm, request_value_ms

LOG_CAP = math.log(100.0)  # a ratio beyond 100x (or a failed request's inf) counts as 100x


def slo_ratio(requests: list[dict], terms: Sequence[SLOTerm]) -> float:
    """The worst term's (value at its share) / bound: <= 1 exactly when every term holds."""
    if not requests:
        raise ValueError("no requests to judge against the SLO")
    worst = 0.0
    for t in terms:
        values = sorted(request_value_ms(r, t.metric) for r in requests)
        k = max(1, math.ceil(t.share * len(values) - 1e-9))  # the k-th smallest must be in bound
        worst = max(worst, values[k - 1] / t.ms)
    return worst


def log_ratio(ratio: float) -> float:
    """log of a ratio, clipped to +-LOG_CAP (inf and 0 included)."""
    if ratio <= 0:
        return -LOG_CAP
    return max(-LOG_CAP, min(LOG_CAP, math.log(ratio)))


def monotone_fit(ys: Sequence[float]) -> list[float]:
    """The non-decreasing sequence closest to `ys` in squared error (pool adjacent violators:
    a value below its predecessor is averaged with it, blocks merging until none is)."""
    blocks: list[list[float]] = []  # [mean, count]
    for y in ys:
        blocks.append([float(y), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, n2 = blocks.pop()
            m1, n1 = blocks.pop()
            blocks.append([(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2])
    return [m for m, n in blocks for _ in range(int(n))]


def fitted(probes: list[Probe]) -> tuple[list[float], list[float]]:
    """(rates ascending, monotone fit of their log ratios); probes at one rate are averaged."""
    by: dict[float, list[float]] = {}
    for p in probes:
        by.setdefault(p.rate, []).append(log_ratio(p.summary["slo_ratio"]))
    rates = sorted(by)
    return rates, monotone_fit([sum(by[r]) / len(by[r]) for r in rates])


def bracket_of(rates: list[float], fit: list[float]) -> tuple[int | None, int | None]:
    """Indices of the highest fitted point that meets (<= 0) and the lowest that misses."""
    above = next((i for i, f in enumerate(fit) if f > 0), None)
    below = (len(fit) - 1 if above is None else above - 1) if fit else None
    return (below if below is not None and below >= 0 else None), above


def crossing(rates: list[float], fit: list[float]) -> float | None:
    """The rate where the fitted log ratio crosses 0, linear between the bracket's ends; None
    when no fitted point meets or none misses."""
    lo, hi = bracket_of(rates, fit)
    if lo is None or hi is None:
        return None
    if fit[hi] == fit[lo]:
        return rates[lo]
    return rates[lo] + (rates[hi] - rates[lo]) * (0.0 - fit[lo]) / (fit[hi] - fit[lo])


def search_capacity(
    probe: Callable[[float], Probe],
    low: float,
    high: float,
    tolerance: float = 0.05,
    max_probes: int = 6,
    headroom: float = 0.05,
) -> dict:
    """Locate the SLO boundary between `low` (the synchronous rate) and `high` (the saturated
    rate) from probes whose summary holds `slo_ratio`. Returns capacity (boundary less
    headroom; the boundary is `high` when even it meets; None when `low`, and then half of it,
    miss), the
    boundary, the final bracket, every probe in the order measured, and why it stopped."""
    return interleave([(search_steps(low, high, tolerance, max_probes, headroom), probe)])[0]


def interleave(searches: list[tuple[Generator, Callable[[float], Probe]]]) -> list[dict]:
    """Run searches (`search_steps` generators, each with its probe) one probe at a time in
    turn: s1, s2, s3, s1, ... A machine whose speed drifts over minutes then weighs on every
    search alike, and the spread of their results is the search's own noise."""
    results: list[dict | None] = [None] * len(searches)
    pending = {i: next(gen) for i, (gen, _probe) in enumerate(searches)}
    while pending:
        for i in list(pending):
            gen, probe = searches[i]
            try:
                pending[i] = gen.send(probe(pending[i]))
            except StopIteration as done:
                results[i] = done.value
                del pending[i]
    return results


def search_steps(
    low: float, high: float, tolerance: float = 0.05, max_probes: int = 6, headroom: float = 0.05
) -> Generator[float, Probe, dict]:
    """The search as a generator: it yields each rate to measure, is sent that rate's Probe,
    and returns `search_capacity`'s result."""
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got low={low}, high={high}")
    if not 0 < tolerance < 1 or not 0 <= headroom < 1 or max_probes < 2:
        raise ValueError("tolerance in (0, 1), headroom in [0, 1) and max_probes >= 2, please")
    probes: list[Probe] = []
    while True:  # the bottom must meet (halved once); a miss becomes the top
        probes.append((yield low))
        if probes[-1].meets:
            break
        if len(probes) > 1:
            return {"capacity": None, "boundary": None, "probes": probes,
                    "why": f"missed even at {low:.3g} req/s"}  # fmt: skip
        high, low = low, low / 2
    if high not in {p.rate for p in probes}:
        probes.append((yield high))
        if probes[-1].meets:  # the boundary is the most the server completes: the same
            # headroom below it, or a check at the capacity is a coin toss there too
            why = "met at the saturated rate: throughput, not latency, bounds it"
            return {"capacity": high * (1 - headroom), "boundary": high, "probes": probes,
                    "why": why}  # fmt: skip
    kept: list[str] = []  # which end of the bracket each new probe replaced
    while len(probes) < max_probes:
        rates, fit = fitted(probes)
        lo, hi = bracket_of(rates, fit)
        if lo is None or hi is None:  # cannot happen: the lowest fitted point meets, the top not
            break
        r_lo, r_hi = rates[lo], rates[hi]
        if r_hi / r_lo - 1 <= tolerance:
            break
        guess = crossing(rates, fit) or (r_lo + r_hi) / 2
        if len(kept) >= 2 and kept[-1] == kept[-2]:  # one end stuck: bisect once
            guess = (r_lo + r_hi) / 2
        width = r_hi - r_lo
        guess = min(max(guess, r_lo + 0.1 * width), r_hi - 0.1 * width)
        probes.append((yield guess))
        kept.append("low" if probes[-1].meets else "high")
    rates, fit = fitted(probes)
    lo, hi = bracket_of(rates, fit)
    boundary = crossing(rates, fit)
    if boundary is None or lo is None or hi is None:
        return {"capacity": None, "boundary": None, "probes": probes, "why": "no bracket"}
    return {
        "capacity": boundary * (1 - headroom),
        "boundary": boundary,
        "bracket": [rates[lo], rates[hi]],
        "probes": probes,
        "why": f"boundary in [{rates[lo]:.3g}, {rates[hi]:.3g}] req/s after {len(probes)} probes",
    }
