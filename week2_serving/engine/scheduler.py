"""Which tokens of which requests the next forward pass computes: continuous batching.

Every step (one forward pass) the scheduler fills a token budget (`max_num_batched_tokens`):

1. the running sequences first, in arrival order: one token each for decodes, the next chunk
   of the prompt for a prefill that did not fit last step (chunked prefill);
2. then new requests from the waiting queue, first come first served, while the budget, the
   batch size (`max_num_seqs`) and the free KV blocks allow.

Requests join and leave the batch at every step (iteration-level scheduling, as in Orca and
vLLM): a finished request frees its slot and blocks at once, instead of idling until the
longest request of its batch is done. When a running sequence needs a block and none is free,
the most recently arrived running sequence is preempted: its blocks are freed and it goes back
to the front of the waiting queue, to be recomputed later (preemption by recompute).

The policies of the lesson, same machinery:
- `continuous`: the above;
- `static`: admit a batch only when the previous batch has completely finished;
- `sequential`: one request at a time.

Pure Python, no torch.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from week2_serving.engine.block_manager import BlockManager
from week2_serving.engine.sequence import Sequence, Status

POLICIES = ("continuous", "static", "sequential")


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 64  # most sequences in one step (the batch size)
    max_num_batched_tokens: int = 512  # token budget of one step (prefill chunks + decodes)
    policy: str = "continuous"

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"scheduling={self.policy!r}: use one of {', '.join(POLICIES)}")
        if self.max_num_seqs < 1 or self.max_num_batched_tokens < 1:
            raise ValueError(
                f"max_num_seqs={self.max_num_seqs} and max_num_batched_tokens="
                f"{self.max_num_batched_tokens} must be >= 1"
            )


@dataclass
class ScheduledBatch:
    """One step's work: compute `num_tokens[i]` tokens of `seqs[i]` (from its num_computed)."""

    seqs: list[Sequence] = field(default_factory=list)
    num_tokens: list[int] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst)
    preempted: list[Sequence] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seqs)

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config, self.bm = config, block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    # --- queue ----------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        self.check_fits(seq)
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def check_fits(self, seq: Sequence) -> None:
        """A request that could not run even alone in an empty cache is refused up front."""
        # the last sampled token is never fed back, so it needs no K/V slot
        need = self.bm.blocks_needed(seq.num_prompt_tokens + seq.params.max_tokens - 1)
        if need > self.bm.num_blocks:
            raise ValueError(
                f"request {seq.request_id} needs up to {need} KV blocks (prompt "
                f"{seq.num_prompt_tokens} + max_tokens {seq.params.max_tokens}) but the cache has "
                f"{self.bm.num_blocks}; lower max_tokens or give the engine more KV blocks"
            )

    def abort(self, seq: Sequence) -> None:
        if seq.is_finished:
            return
        if seq in self.running:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.bm.free_seq(seq)
        seq.finish("abort")

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def max_running(self) -> int:
        return 1 if self.config.policy == "sequential" else self.config.max_num_seqs

    # --- one step -------------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.config.max_num_batched_tokens

        # 1. running sequences, oldest first; preempt the youngest when blocks run out
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed, budget)
            copies = self.bm.allocate_slots(seq, n)
            while copies is None:  # out of blocks: take them from the youngest running sequence
                victim = self.running[-1]
                self._preempt(victim, batch)
                if victim is seq:
                    break
                copies = self.bm.allocate_slots(seq, n)
            if copies is None:  # preempted itself: nothing older is left to schedule
                break
            batch.seqs.append(seq)
            batch.num_tokens.append(n)
            batch.copies += copies
            budget -= n
            i += 1

        # 2. waiting sequences, first come first served (never when we just had to preempt)
        admit = not batch.preempted and (self.config.policy == "continuous" or not self.running)
        while admit and self.waiting and budget > 0 and len(self.running) < self.max_running:
            seq = self.waiting[0]
            self.bm.allocate_prefix(seq)
            n = min(seq.num_uncomputed, budget)
            copies = self.bm.allocate_slots(seq, n)
            if copies is None:  # no room: it stays first in line (no overtaking)
                self.bm.free_seq(seq)
                break
            self.waiting.popleft()
            self.bm.record_admission(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.seqs.append(seq)
            batch.num_tokens.append(n)
            batch.copies += copies
            budget -= n
        return batch

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        self.running.remove(seq)
        self.bm.free_seq(seq)  # recompute later: the tokens stay, the K/V go
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)

    def update(self, batch: ScheduledBatch, sampled: dict[int, int]) -> list[Sequence]:
        """After the forward pass: advance counters, append sampled tokens, retire finished.

        `sampled` maps seq_id -> token for the sequences whose last token was computed.
        Returns the sequences that finished this step.
        """
        finished = []
        for seq, n in zip(batch.seqs, batch.num_tokens):
            seq.num_computed += n
            self.bm.register_full_blocks(seq)
            if seq.seq_id in sampled:
                seq.append_token(sampled[seq.seq_id])
            if seq.is_finished:
                self.running.remove(seq)
                self.bm.free_seq(seq)
                finished.append(seq)
        return finished
