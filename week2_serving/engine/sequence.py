"""A request as the engine sees it: its tokens, how many have K/V in the cache, its blocks.

One idea carries the whole engine: a sequence is a list of token ids plus a counter
`num_computed` — how many of those tokens already have their keys and values in the KV cache.
Every step computes some of the rest:

    tokens:       [p0 p1 p2 p3 p4 p5 | o0 o1]      prompt, then generated outputs
    num_computed:  ^^^^^^^^^^^^^^^^^^^^^^^^ 7       (o1 was sampled last step, not yet computed)

- prefill is "many tokens not computed yet" (possibly done in chunks over several steps),
- decode is "exactly one token not computed" (the one sampled last step),
- preemption by recompute is "forget the cache": free the blocks, `num_computed = 0`; the
  outputs stay in `tokens`, so the next prefill recomputes prompt + outputs and decoding
  continues where it stopped.

Pure Python, no torch: the scheduler and block manager are testable on their own.
"""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field


class Status(enum.Enum):
    WAITING = "waiting"  # in the waiting queue (new, or preempted)
    RUNNING = "running"  # has blocks, is scheduled every step
    FINISHED = "finished"  # done: stop token, max_tokens, aborted, or too long


@dataclass
class SamplingParams:
    """What vLLM's SamplingParams means by the same names (the subset this engine implements)."""

    max_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    seed: int | None = None  # per-request generator: same seed, same tokens
    ignore_eos: bool = False
    stop_token_ids: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens={self.max_tokens!r} must be an integer >= 1")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature} must be >= 0")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k} must be >= 0 (0 turns it off)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p} must be in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


_ids = itertools.count()


class Sequence:
    def __init__(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        eos_token_id: int | None = None,
        cache_salt: str | None = None,
    ):
        if not prompt_token_ids:
            raise ValueError("a request needs at least one prompt token")
        self.seq_id = next(_ids)
        self.request_id = request_id if request_id is not None else str(self.seq_id)
        self.params = params or SamplingParams()
        self.eos_token_id = eos_token_id
        self.cache_salt = cache_salt  # enters the first block's prefix-cache key: same salt, shared
        self.tokens: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.num_computed = 0  # tokens whose K/V are in the cache
        self.num_cached_prompt = 0  # prompt tokens found in the prefix cache at admission
        self.block_table: list[int] = []  # logical block i -> physical block id
        self.block_hashes: list[bytes] = []  # prefix-cache key of each full, computed block
        self.status = Status.WAITING
        self.finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
        self.error: str | None = None  # what went wrong, when finish_reason is "error"
        self.arrival_time = time.monotonic()
        self.last_token_time: float | None = None  # when the latest output token was sampled
        self.num_preemptions = 0

    # --- views ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def output_token_ids(self) -> list[int]:
        return self.tokens[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.tokens) - self.num_prompt_tokens

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED

    # --- updates --------------------------------------------------------------------------------
    def append_token(self, token_id: int) -> None:
        """Add a sampled token and finish the sequence if it is a stop token or the last one."""
        self.tokens.append(token_id)
        p = self.params
        if not p.ignore_eos and (token_id == self.eos_token_id or token_id in p.stop_token_ids):
            self.finish("stop")
        elif self.num_output_tokens >= p.max_tokens:
            self.finish("length")

    def finish(self, reason: str) -> None:
        self.status = Status.FINISHED
        self.finish_reason = reason

    def __repr__(self) -> str:
        return (
            f"Sequence(id={self.seq_id}, {self.status.value}, tokens={len(self)}, "
            f"computed={self.num_computed}, blocks={self.block_table})"
        )
