"""TPOT weighted by request or by token: two averages of one quantity that differ.

A request's TPOT is its decode time per token after the first, (E2EL − TTFT) / (n − 1).

- Request-weighted (`vllm bench serve`'s mean_tpot_ms, and the SLO check of each request):
  every request counts once, whatever its length. "What does a typical user see?"
- Token-weighted: total decode time over total decode tokens, Σ(E2EL − TTFT) / Σ(n − 1), so a
  request of 500 tokens weighs 50× one of 10. "How fast does the server stream tokens?"

They agree when every request has the same length. They part when lengths vary *and* TPOT
depends on length: a long request decodes through more of the run's crowded moments (and
with a longer context), a short one may run alone; in continuous batching the long ones are
also the ones present when the batch is fullest. The percentiles follow the same rule: the
token-weighted p99 is the TPOT below which 99% of the decoded *tokens* were produced.
"""

from __future__ import annotations

import numpy as np

from week2_serving.harness.metrics import RequestRecord


def token_weighted_tpot(records: list[RequestRecord], percentiles=(50.0, 99.0)) -> dict:
    """{mean,pXX}_tpot_token_weighted_ms over the successful records with > 1 output token."""
    decoding = [r for r in records if r.success and r.output_tokens > 1]
    if not decoding:
        return {"mean_tpot_token_weighted_ms": 0.0} | {
            f"p{p:g}_tpot_token_weighted_ms": 0.0 for p in percentiles
        }
    tokens = np.array([r.output_tokens - 1 for r in decoding])
    times = np.array([r.latency - r.ttft for r in decoding])
    per_request = times / tokens * 1000
    out = {"mean_tpot_token_weighted_ms": float(times.sum() / tokens.sum() * 1000)}
    order = np.argsort(per_request)
    cum = np.cumsum(tokens[order]) / tokens.sum()  # share of tokens at or below each TPOT
    for p in percentiles:
        i = min(int(np.searchsorted(cum, p / 100)), len(order) - 1)
        out[f"p{p:g}_tpot_token_weighted_ms"] = float(per_request[order][i])
    return out
