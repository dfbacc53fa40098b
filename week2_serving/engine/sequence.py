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

Pure Python logic, no tensors: the scheduler and block manager are testable on their own.
(`SamplingParams` is week 1's: one sampling rule for the whole course.)
"""

from __future__ import annotations

import enum
import itertools
import time
from collections.abc import Iterable

from week1_gpt_kvcache.sampling import SamplingParams, TokenLogprobs

__all__ = ["SamplingParams", "Sequence", "Status"]


class Status(enum.Enum):
    WAITING = "waiting"  # in the waiting queue (new, or preempted)
    RUNNING = "running"  # has blocks, is scheduled every step
    FINISHED = "finished"  # done: stop token, max_tokens, aborted, or too long


_ids = itertools.count()


class Sequence:
    def __init__(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        eos_token_id: int | Iterable[int] | None = None,  # one id or several (Llama 3: several)
        cache_salt: str | None = None,
    ):
        if not prompt_token_ids:
            raise ValueError("a request needs at least one prompt token")
        self.seq_id = next(_ids)
        self.request_id = request_id if request_id is not None else str(self.seq_id)
        self.params = params or SamplingParams()
        ids = () if eos_token_id is None else eos_token_id
        self.eos_token_ids = frozenset([ids] if isinstance(ids, int) else ids)  # each one stops
        self.cache_salt = cache_salt  # enters the first block's prefix-cache key: same salt, shared
        self.lora_name: str | None = None  # the LoRA adapter it runs with (lora/); None: base
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
        self.output_logprobs: list[TokenLogprobs] = []  # one per output token, if asked
        self.grammar = None  # structured.GrammarState: the tokens allowed next (structured output)
        self.spec_tokens: list[int] = []  # this step's proposed tokens, verified after it (spec/)
        self.padding = False  # a static-padded batch's stand-in for a finished request's row

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
        is_eos = token_id in self.eos_token_ids and not p.ignore_eos
        if (is_eos or token_id in p.stop_token_ids) and self.num_output_tokens > p.min_tokens:
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
