"""The engine's Prometheus metrics, under vLLM's names, so one dashboard reads both servers.

    metrics = EngineMetrics("tiny")        # one per engine, each with its own registry
    ...                                    # the engine thread records as it steps
    body = metrics.exposition()            # the HTTP thread renders (`CONTENT_TYPE`)

Who writes what: only the engine thread records (`on_token`, `on_finish`, `on_abort`, and
`record_state` after each step and each change of the queues); any thread may call
`exposition()`. prometheus_client's metrics are
thread-safe, and the gauges that describe the block manager and the queues are *set* by the
engine thread at the end of each step, so a render never reads the engine's own structures
while the engine is changing them.

Counters are named without `_total`: prometheus_client adds it (`vllm:prompt_tokens` is
exposed as `vllm:prompt_tokens_total`). Every metric carries a `model_name` label, as vLLM's.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from week2_serving.engine.block_manager import BlockManager
from week2_serving.engine.scheduler import Scheduler
from week2_serving.engine.sequence import Sequence

CONTENT_TYPE = CONTENT_TYPE_LATEST  # the Content-Type of `exposition()`'s bytes

FINISH_REASONS = ("stop", "length", "abort", "error")  # exported at 0 before the first one

# Bucket edges in seconds: wide enough for a small model on a CPU and a large one on a GPU.
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)


class EngineMetrics:
    """One engine's metrics in a registry of its own (tests and servers may make many)."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self.registry = CollectorRegistry()
        reg, name = self.registry, [model_name]

        def gauge(metric: str, doc: str) -> Gauge:
            return Gauge(metric, doc, ["model_name"], registry=reg).labels(*name)

        def counter(metric: str, doc: str) -> Counter:
            return Counter(metric, doc, ["model_name"], registry=reg).labels(*name)

        def histogram(metric: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(metric, doc, ["model_name"], registry=reg, buckets=buckets).labels(
                *name
            )

        self.running = gauge("vllm:num_requests_running", "Requests in the running batch.")
        self.waiting = gauge("vllm:num_requests_waiting", "Requests in the waiting queue.")
        self.kv_usage = gauge("vllm:kv_cache_usage_perc", "KV-cache usage: 1 means every block.")
        self.prefix_queries = counter(
            "vllm:prefix_cache_queries", "Prefix cache queries, in prompt tokens looked up."
        )
        self.prefix_hits = counter(
            "vllm:prefix_cache_hits", "Prefix cache hits, in prompt tokens found cached."
        )
        self.preemptions = counter("vllm:num_preemptions", "Preemptions (by recompute).")
        self.prompt_tokens = counter("vllm:prompt_tokens", "Prompt tokens of started requests.")
        self.generation_tokens = counter("vllm:generation_tokens", "Generated tokens.")
        self.request_success = Counter(
            "vllm:request_success",
            "Finished requests, by finish reason.",
            ["model_name", "finished_reason"],
            registry=reg,
        )
        for reason in FINISH_REASONS:
            self.request_success.labels(model_name, reason)
        self.ttft = histogram(
            "vllm:time_to_first_token_seconds", "Time to first token in seconds.", TTFT_BUCKETS
        )
        self.itl = histogram(
            "vllm:inter_token_latency_seconds", "Time between two output tokens.", ITL_BUCKETS
        )
        self.e2e = histogram(
            "vllm:e2e_request_latency_seconds",
            "Arrival to last token in seconds (finished, not aborted, requests).",
            E2E_BUCKETS,
        )
        # cumulative counts kept by the block manager and scheduler, as last seen
        self._seen = {"queries": 0, "hits": 0, "preemptions": 0}

    # --- the engine thread --------------------------------------------------------------------
    def on_token(self, seq: Sequence, now: float | None = None) -> None:
        """A new output token of `seq` (call after it is appended): TTFT or inter-token time."""
        now = time.monotonic() if now is None else now
        if seq.last_token_time is None:  # its first token: the prompt is done
            self.ttft.observe(now - seq.arrival_time)
            self.prompt_tokens.inc(seq.num_prompt_tokens)
        else:
            self.itl.observe(now - seq.last_token_time)
        seq.last_token_time = now
        self.generation_tokens.inc()

    def on_finish(self, seq: Sequence, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.request_success.labels(self.model_name, seq.finish_reason or "stop").inc()
        self.e2e.observe(now - seq.arrival_time)

    def on_abort(self) -> None:
        self.request_success.labels(self.model_name, "abort").inc()

    def record_state(self, scheduler: Scheduler, block_manager: BlockManager) -> None:
        """Copy the queue lengths, the KV pool's usage and the cumulative prefix-cache and
        preemption counts into the metrics (the counters grow by what is new since last time).
        The engine thread calls it after every step and every change of its queues."""
        bm = block_manager
        self.running.set(len(scheduler.running))
        self.waiting.set(len(scheduler.waiting))
        self.kv_usage.set(bm.num_used_blocks / bm.num_blocks)
        new = {"queries": bm.prefix_queries, "hits": bm.prefix_hits}
        new["preemptions"] = scheduler.num_preemptions
        for key, counter in (
            ("queries", self.prefix_queries),
            ("hits", self.prefix_hits),
            ("preemptions", self.preemptions),
        ):
            counter.inc(max(0, new[key] - self._seen[key]))
        self._seen = new

    # --- any thread -----------------------------------------------------------------------------
    def exposition(self) -> bytes:
        """Every metric in Prometheus' text format (serve it with `CONTENT_TYPE`)."""
        return generate_latest(self.registry)
