"""What the server counted: prefix-cache queries and hits, and preemptions, from `/metrics`.

vLLM (and our engine, under the same names) exposes Prometheus counters at GET /metrics:

- `vllm:prefix_cache_queries_total`: prompt tokens looked up in the prefix cache;
- `vllm:prefix_cache_hits_total`: of those, tokens found there (older vLLM names the pair
  `vllm:gpu_prefix_cache_queries` / `vllm:gpu_prefix_cache_hits`; both are read);
- `vllm:num_preemptions_total`: running requests pushed back to the queue (their KV blocks
  were needed; they recompute later);
- `vllm:spec_decode_num_drafts_total`, `..._num_draft_tokens_total`,
  `..._num_accepted_tokens_total`: speculative decoding's rounds, guesses and accepted
  guesses, when the server speculates (mean acceptance length = 1 + accepted / drafts).

Counters only grow from the server's start, so a sweep scrapes before its first cell and after
each one, and records the difference: what that cell's traffic did. The hit rate is hits /
queries, in tokens. A server without /metrics, or one that answers with an error, gives
`{"available": False, "error": ...}`: missing numbers, never a failed cell.
"""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

# what we record -> the metric names that carry it (newest first); each may end in `_total`
COUNTERS: dict[str, tuple[str, ...]] = {
    "prefix_cache_queries": ("vllm:prefix_cache_queries", "vllm:gpu_prefix_cache_queries"),
    "prefix_cache_hits": ("vllm:prefix_cache_hits", "vllm:gpu_prefix_cache_hits"),
    "num_preemptions": ("vllm:num_preemptions",),
    # speculative decoding, when the server runs it (vLLM and our engine use these names)
    "spec_decode_num_drafts": ("vllm:spec_decode_num_drafts",),
    "spec_decode_num_draft_tokens": ("vllm:spec_decode_num_draft_tokens",),
    "spec_decode_num_accepted_tokens": ("vllm:spec_decode_num_accepted_tokens",),
}


def parse_counters(text: str) -> dict[str, float]:
    """The COUNTERS found in a Prometheus text exposition, each summed over its label sets
    (one per engine or model). A counter the text does not carry is left out."""
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if sample.name.endswith("_created"):  # the counter's start time, not a count
                continue
            samples[name] = samples.get(name, 0.0) + float(sample.value)
    found = {}
    for key, names in COUNTERS.items():
        name = next((n for n in names if n in samples), None)
        if name is not None:
            found[key] = samples[name]
    return found


def scrape(base_url: str, timeout_s: float = 5.0) -> dict:
    """The server's counters now: {"available": True, counter: value, ...}, or
    {"available": False, "error": why} when there is no /metrics to read."""
    url = base_url.rstrip("/") + "/metrics"
    try:
        resp = httpx.get(url, timeout=timeout_s)
        resp.raise_for_status()
        counters = parse_counters(resp.text)
    except Exception as e:  # no endpoint, an HTTP error, text that does not parse
        return {"available": False, "error": f"metrics unavailable: {type(e).__name__}: {e}"}
    return {"available": True, **counters}


def cell_counters(before: dict, after: dict) -> dict:
    """What changed between two scrapes, with the prefix-cache hit rate of that interval."""
    if not after.get("available"):
        return {"available": False, "error": after.get("error", "metrics unavailable")}
    if not before.get("available"):
        return {"available": False, "error": "no scrape before this cell to compare with"}
    out: dict = {"available": True}
    for key in COUNTERS:
        if key in after and key in before:
            out[key] = after[key] - before[key]
    queries, hits = out.get("prefix_cache_queries"), out.get("prefix_cache_hits")
    out["prefix_cache_hit_rate"] = hits / queries if queries and hits is not None else None
    drafts, accepted = out.get("spec_decode_num_drafts"), out.get("spec_decode_num_accepted_tokens")
    if drafts and accepted is not None:  # tokens per verification round (vLLM's definition)
        out["spec_decode_mean_acceptance_length"] = 1 + accepted / drafts
    return out


def requests_in_flight(base_url: str, timeout_s: float = 2.0) -> float | None:
    """Requests the server holds now (`vllm:num_requests_running` + `..._waiting`, over every
    label set); None when /metrics cannot be read or carries neither gauge."""
    try:
        resp = httpx.get(base_url.rstrip("/") + "/metrics", timeout=timeout_s)
        resp.raise_for_status()
        families = list(text_string_to_metric_families(resp.text))
    except Exception:
        return None
    names = ("vllm:num_requests_running", "vllm:num_requests_waiting")
    values = [s.value for f in families for s in f.samples if s.name in names]
    return float(sum(values)) if values else None
