"""Errors the engine raises on purpose, for its caller (the HTTP server) to turn into answers.

- `EngineFull`: the waiting queue is at `EngineConfig.max_num_waiting`; the request was not
  taken. A server answers 503 with a `Retry-After` header from `retry_after`, and the client
  tries again later instead of queueing behind a backlog that only grows.
- `EngineDead`: the engine failed (a fault in the batched forward pass, say) and serves no
  more requests; every request in flight and every new one gets this error.

A fault that concerns one request only (its sampler row, its stop check) is not raised: that
request finishes with `finish_reason="error"` and the others go on (`LLMEngine.step`).
"""

from __future__ import annotations


class EngineFull(RuntimeError):
    """The waiting queue is full: come back in about `retry_after` seconds."""

    def __init__(self, num_waiting: int, retry_after: float, limit: str = "max_num_waiting"):
        self.num_waiting = num_waiting
        self.retry_after = retry_after
        super().__init__(
            f"the engine is full: {num_waiting} requests are already waiting "
            f"({limit}); retry in about {retry_after:.1f} s"
        )


class EngineDead(RuntimeError):
    """The engine stopped after a fault and takes no more requests: restart the server."""
