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

The policies of the lesson are entries of one table, `POLICIES`; each says when new requests
may join and how many may run at once (same machinery for all):
- `continuous`: the above;
- `static`: admit a batch only when the previous batch has completely finished; a finished
  request leaves the forward pass at once (its slot idles, at no cost);
- `static-padded`: static batching as `generate()` on a padded batch runs it: a finished request
  keeps its row, computed (and thrown away) every step until the batch's longest is done;
- `sequential`: one request at a time.
To add a policy, add one entry to `POLICIES`: the config check, its error message and the
server's `--scheduling` choices all read that table.

Pure Python, no torch.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

from week2_serving.engine.block_manager import BlockManager
from week2_serving.engine.sequence import Sequence, Status

log = logging.getLogger("week2.engine")


@dataclass(frozen=True)
class Policy:
    """A scheduling policy: when new requests may join the running batch, and how many run."""

    help: str  # one line, shown in error messages and --help
    admit_while_running: bool  # may a new request join while others still run?
    max_running: int | None = None  # at most this many running at once (None: max_num_seqs)
    pad_finished: bool = False  # a finished request's row keeps computing until the batch ends

    def may_admit(self, num_running: int) -> bool:
        return self.admit_while_running or num_running == 0

    def limit(self, max_num_seqs: int) -> int:
        return min(self.max_running or max_num_seqs, max_num_seqs)


POLICIES: dict[str, Policy] = {
    "continuous": Policy("new requests join the batch at every step", admit_while_running=True),
    "static": Policy(
        "a batch is admitted once the previous one is done", admit_while_running=False
    ),
    "static-padded": Policy(
        "static, and finished rows keep computing until the batch ends (generate() on a batch)",
        admit_while_running=False,
        pad_finished=True,
    ),
    "sequential": Policy("one request at a time", admit_while_running=False, max_running=1),
}


def get_policy(name: str) -> Policy:
    """The policy called `name`, or an error that lists the ones there are."""
    if name not in POLICIES:
        raise ValueError(f"scheduling={name!r}: use one of {', '.join(POLICIES)}")
    return POLICIES[name]


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 64  # most sequences in one step (the batch size)
    max_num_batched_tokens: int = 512  # token budget of one step (prefill chunks + decodes)
    policy: str = "continuous"  # a name in POLICIES
    max_loras: int = 0  # most distinct LoRA adapters running at once (lora/); 0: no LoRA
    num_lookahead_slots: int = 0  # extra slots a decode reserves for speculative tokens (spec/)
    max_model_len: int | None = None  # a padding row stops here (static-padded); None: no bound

    def __post_init__(self) -> None:
        get_policy(self.policy)
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
    sample: list[bool] = field(default_factory=list)  # its last token is computed: sample next
    copies: list[tuple[int, int]] = field(default_factory=list)  # copy-on-write (src, dst)
    preempted: list[Sequence] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seq: Sequence, n: int, copies: list[tuple[int, int]]) -> None:
        self.seqs.append(seq)
        self.num_tokens.append(n)
        # a padding row (static-padded) is computed but never sampled
        self.sample.append(not seq.padding and seq.num_computed + n >= len(seq))  # > : lookahead
        self.copies += copies

    @property
    def total_tokens(self) -> int:
        return sum(self.num_tokens)

    @property
    def sampled_seqs(self) -> list[Sequence]:
        """The sequences that get a new token this step, in batch order (the logits' rows)."""
        return [s for s, want in zip(self.seqs, self.sample) if want]


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager):
        self.config, self.bm = config, block_manager
        self.policy = get_policy(config.policy)
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.padding: list[Sequence] = []  # static-padded: finished requests' rows (see _pad)
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
        """Drop a request wherever it is (running, even mid-prefill, or waiting); free its blocks."""
        if seq.is_finished:
            return
        if seq in self.running:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self.bm.free_seq(seq)
        seq.finish("abort")
        if not self.running:  # that was the batch's last real request: its padding goes too
            self.drop_padding()

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)  # padding rows live only while others run

    @property
    def max_running(self) -> int:
        return self.policy.limit(self.config.max_num_seqs)

    # --- one step -------------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        if not self.running:  # (the batch ended by a preemption: no padding without it)
            self.drop_padding()
        self._reclaim_padding()
        budget = self._schedule_running(batch, self.config.max_num_batched_tokens)
        budget = self._schedule_padding(batch, budget)
        # never admit when we just had to preempt: the pool is already too small
        if not batch.preempted and self.policy.may_admit(len(self.running)):
            self._admit_waiting(batch, budget)
        return batch

    def _schedule_running(self, batch: ScheduledBatch, budget: int) -> int:
        """Running sequences, oldest first; preempt the youngest when blocks run out.

        Returns the token budget left."""
        # LAB:scheduler begin
        # HINT: each running sequence, oldest first, while budget lasts: n = its uncomputed tokens
        # HINT: (capped by the budget) + self._lookahead(seq, budget - n).
        # HINT: while the block manager can't give n slots: drop the lookahead first, else preempt
        # HINT: the youngest running sequence (self._preempt); if that was seq itself, stop.
        # HINT: then batch.add(seq, n, self.bm.allocate_slots(seq, n)) and spend n of the budget.
        # HINT: return the budget left.
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed, budget)
            n += self._lookahead(seq, budget - n)
            while not self.bm.can_allocate_slots(seq, n):  # take blocks from the youngest
                if n > seq.num_uncomputed:  # drop the lookahead before preempting anyone
                    n = min(seq.num_uncomputed, budget)
                    continue
                victim = self.running[-1]
                self._preempt(victim, batch)
                if victim is seq:  # preempted itself: nothing older is left to schedule
                    return budget
            batch.add(seq, n, self.bm.allocate_slots(seq, n))
            budget -= n
            i += 1
        return budget
        # LAB:scheduler end

    def _lookahead(self, seq: Sequence, budget: int) -> int:
        """Slots a decode reserves for speculative tokens: never past its max_tokens."""
        if seq.num_uncomputed != 1 or not self.config.num_lookahead_slots:
            return 0
        room = seq.params.max_tokens - seq.num_output_tokens - 1
        return max(0, min(self.config.num_lookahead_slots, budget, room))

    def _admit_waiting(self, batch: ScheduledBatch, budget: int) -> None:
        """Waiting sequences, first come first served, while budget, batch size and blocks allow."""
        # LAB:scheduler begin
        # HINT: while requests wait, budget lasts and fewer than self.max_running run: take the 1st
        # HINT: (it stays first if self.lora_fits says no). self.bm.allocate_prefix, then n = its
        # HINT: uncomputed tokens within the budget; no room for n slots: free it and stop.
        # HINT: else allocate the slots, pop it, self.bm.record_admission, mark it RUNNING, add it
        # HINT: to self.running, batch.add it and spend n of the budget.
        while self.waiting and budget > 0 and len(self.running) < self.max_running:
            seq = self.waiting[0]
            if not self.lora_fits(seq):  # its adapter can get no slot: it waits first in line
                break
            self.bm.allocate_prefix(seq)
            n = min(seq.num_uncomputed, budget)
            if not self.bm.can_allocate_slots(seq, n):  # no room: it stays first in line
                self.bm.free_seq(seq)
                break
            copies = self.bm.allocate_slots(seq, n)
            self.waiting.popleft()
            self.bm.record_admission(seq)
            seq.status = Status.RUNNING
            self.running.append(seq)
            batch.add(seq, n, copies)
            budget -= n
        # LAB:scheduler end

    def _schedule_padding(self, batch: ScheduledBatch, budget: int) -> int:
        """static-padded: each padding row computes one token, after the real sequences got
        theirs; a row that finds no budget or no free slot is dropped (never a real request)."""
        for pad in list(self.padding):
            if budget > 0 and self.bm.can_allocate_slots(pad, 1):
                batch.add(pad, 1, self.bm.allocate_slots(pad, 1))
                budget -= 1
            else:
                self._drop_padding(pad)
        return budget

    def _reclaim_padding(self) -> None:
        """Padding rows give their blocks back before a real request would be preempted."""
        budget, need = self.config.max_num_batched_tokens, 0
        for seq in self.running:
            n = min(seq.num_uncomputed, budget)
            need += max(0, self.bm.blocks_needed(seq.num_computed + n) - len(seq.block_table))
            budget -= n
        while self.padding and self.bm.num_free_blocks < need:
            self._drop_padding(self.padding[-1])

    def _pad(self, seq: Sequence) -> None:
        """Keep a finished sequence's row in the batch: a stand-in sequence takes over its blocks
        and repeats its last token, so the forward pass does the work a padded row does. The
        finished request itself is done (its tokens never change again)."""
        pad = Sequence(list(seq.tokens), seq.params, request_id=f"{seq.request_id}/padding")
        pad.padding = True
        pad.num_computed, pad.lora_name, pad.cache_salt = (
            seq.num_computed,
            seq.lora_name,
            seq.cache_salt,
        )
        pad.block_table, pad.block_hashes = seq.block_table, seq.block_hashes
        seq.block_table, seq.block_hashes = [], []  # the blocks are the padding row's now
        pad.status = Status.RUNNING
        self.padding.append(pad)

    def _advance_padding(self, pad: Sequence) -> None:
        """After a padding row's step: one more (thrown-away) token, up to max_model_len."""
        if len(pad) >= (self.config.max_model_len or len(pad) + 1):
            self._drop_padding(pad)
        else:
            pad.tokens.append(pad.tokens[-1])

    def _drop_padding(self, pad: Sequence) -> None:
        self.padding.remove(pad)
        self.bm.free_seq(pad)

    def drop_padding(self, lora_name: str | None = None) -> None:
        """Drop every padding row (or those running `lora_name`, before it is unloaded)."""
        for pad in list(self.padding):
            if lora_name is None or pad.lora_name == lora_name:
                self._drop_padding(pad)

    def lora_fits(self, seq: Sequence) -> bool:
        """May `seq` run now: its adapter is in use already or a weight slot is left for it?"""
        if seq.lora_name is None or not self.config.max_loras:
            return True
        active = {s.lora_name for s in self.running} - {None}
        return seq.lora_name in active or len(active) < self.config.max_loras

    def _preempt(self, seq: Sequence, batch: ScheduledBatch) -> None:
        # LAB:scheduler begin
        # HINT: take seq out of the running list and free its blocks (its tokens stay: recompute).
        # HINT: mark it WAITING, count the preemption (on seq and on self), put it at the FRONT of
        # HINT: the waiting queue and record it in batch.preempted.
        self.running.remove(seq)
        self.bm.free_seq(seq)  # recompute later: the tokens stay, the K/V go
        seq.status = Status.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)
        batch.preempted.append(seq)
        # LAB:scheduler end

    def update(self, batch: ScheduledBatch, sampled: dict[int, int]) -> list[Sequence]:
        """After the forward pass: advance counters, append sampled tokens, retire finished.

        `sampled` maps seq_id -> token for the sequences whose last token was computed. A
        sequence already finished this step (its sampler row failed) is retired too. An error
        in one sequence's own update (its stop check) finishes that sequence with
        finish_reason "error"; the others go on. Returns the sequences that finished.
        """
        finished = []
        for seq, n in zip(batch.seqs, batch.num_tokens):
            seq.num_computed += n
            if not seq.padding:  # a padding row's repeated tokens are no prefix worth keeping
                self.bm.register_full_blocks(seq)
            if seq.padding:
                if seq in self.padding:  # (not dropped while scheduling)
                    self._advance_padding(seq)
                continue
            if seq.seq_id in sampled:
                try:
                    seq.append_token(sampled[seq.seq_id])
                except Exception as e:  # this request's fault only: fail it, not the step
                    log.exception("request %s failed in its update", seq.request_id)
                    fail(seq, e)
            if seq.is_finished:
                self.running.remove(seq)
                if self.policy.pad_finished and seq.finish_reason in ("stop", "length"):
                    self._pad(seq)
                self.bm.free_seq(seq)  # (nothing left to free when _pad took the blocks)
                finished.append(seq)
        if not self.running:  # the batch's last real request is done: its padding goes too
            self.drop_padding()
        return finished


def fail(seq: Sequence, error: BaseException) -> None:
    """Finish one request with finish_reason "error" and say why (its blocks are freed later)."""
    seq.error = f"{type(error).__name__}: {error}"
    seq.finish("error")
