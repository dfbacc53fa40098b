"""Serving metrics, defined exactly as `vllm bench serve` defines them.

One `RequestRecord` per request: when it was sent, when each streamed chunk arrived, how
many tokens came back, and whether it failed. From those:

- TTFT (time to first token): first chunk − send time. What a user waits before text appears.
- ITL (inter-token latency): the gaps between consecutive chunks (a chunk may hold several
  tokens), pooled over all requests.
- TPOT (time per output token): (E2EL − TTFT) / (output tokens − 1) per request, for requests
  with more than one output token. The decode speed one user sees.
- E2EL (end-to-end latency): last byte − send time.
- Throughput over the benchmark's wall time `duration_s`: completed requests/s, output
  tokens/s, and (input + output) tokens/s.
- Goodput: completed requests/s that met every SLO given (TTFT, TPOT, E2EL in ms); a request
  with one output token counts TPOT as 0.

Statistics are mean, std, median and chosen percentiles (numpy's linear interpolation), in ms.
Field names match vLLM's results (mean_ttft_ms, p99_itl_ms, output_throughput, ...).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class RequestRecord:
    prompt_len: int  # input tokens
    start_time: float = 0.0  # when the request was sent (perf_counter seconds)
    ttft: float = 0.0  # seconds to the first content chunk
    latency: float = 0.0  # seconds to the end of the response (E2EL)
    itl: list[float] = field(default_factory=list)  # seconds between consecutive chunks
    output_tokens: int = 0  # from the server's usage, or the tokenizer on the text
    generated_text: str = ""
    success: bool = False
    error: str = ""
    expected_output_len: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)


DEFAULT_PERCENTILES = (50.0, 90.0, 99.0)


def _stats(name: str, values_s: list[float], percentiles) -> dict:
    """mean/std/median/pXX of `values_s` (seconds) as `<stat>_<name>_ms`; zeros if empty."""
    arr = np.asarray(values_s if values_s else [0.0], dtype=np.float64) * 1000
    out = {
        f"mean_{name}_ms": float(arr.mean()),
        f"std_{name}_ms": float(arr.std()),
        f"median_{name}_ms": float(np.median(arr)),
    }
    for p in percentiles:
        out[f"p{p:g}_{name}_ms"] = float(np.percentile(arr, p))
    return out


def tpot(rec: RequestRecord) -> float | None:
    """Seconds per output token after the first; None for requests of one token or fewer."""
    if rec.output_tokens > 1:
        return (rec.latency - rec.ttft) / (rec.output_tokens - 1)
    return None


def compute_metrics(
    records: list[RequestRecord],
    duration_s: float,
    percentiles=DEFAULT_PERCENTILES,
    slo_ms: dict[str, float] | None = None,
) -> dict:
    """Aggregate metrics over a benchmark run of `duration_s` seconds (wall time)."""
    if duration_s <= 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    slo_ms = slo_ms or {}
    bad = set(slo_ms) - {"ttft", "tpot", "e2el"}
    if bad:
        raise ValueError(f"unknown SLO metric(s) {sorted(bad)}; use ttft, tpot, e2el (in ms)")
    ok = [r for r in records if r.success]
    ttfts = [r.ttft for r in ok]
    tpots = [t for r in ok if (t := tpot(r)) is not None]
    itls = [x for r in ok for x in r.itl]
    e2els = [r.latency for r in ok]
    total_in = sum(r.prompt_len for r in ok)
    total_out = sum(r.output_tokens for r in ok)
    good = 0
    for r in ok:
        measured = {"ttft": r.ttft, "tpot": tpot(r) or 0.0, "e2el": r.latency}
        if all(measured[k] * 1000 <= v for k, v in slo_ms.items()):
            good += 1
    out = {
        "duration": duration_s,
        "completed": len(ok),
        "failed": len(records) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration_s,
        "request_goodput": good / duration_s if slo_ms else None,
        "output_throughput": total_out / duration_s,
        "total_token_throughput": (total_in + total_out) / duration_s,
    }
    for name, vals in (("ttft", ttfts), ("tpot", tpots), ("itl", itls), ("e2el", e2els)):
        out.update(_stats(name, vals, percentiles))
    return out
