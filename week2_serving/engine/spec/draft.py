"""Draft-model proposer: a smaller model with the same tokenizer guesses k tokens, one at a time.

The draft model gets a `ModelRunner` of its own: its own weights and its own KV pool, of the
same number of blocks and block size as the target's, *indexed by the same block ids*. A
sequence's block table is then valid in both pools, so the block manager stays single: prefix
caching, copy-on-write, preemption and the rollback of rejected tokens all act on both caches
at once, with no second set of tables to keep in step. (The alternative, a second block
manager for the draft, would duplicate all that bookkeeping and could drift.)

For that to hold, the draft must compute K/V for every token the target computes: each step
it mirrors the target's prefill chunks too (a small model: cheap), and the `ScheduledBatch`'s
copy-on-write copies are applied to its pool as well. Per sequence it remembers how many
positions its pool holds (`computed`), which lags the target's by one after a step where every
guess was accepted (the bonus token was never fed to the draft); the next step catches up.

One step, for the sequences that speculate:
1. one forward over every scheduled sequence's uncomputed tokens (prefill chunks, catch-up,
   and the last sampled token), sampling guess 1 from the last row;
2. k - 1 single-token forwards, each feeding the previous guess and sampling the next.
The guesses are drawn from q (temperature / top-k / top-p, as the target's p), or argmax for
greedy requests; q is kept for the rejection rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from week2_serving.engine.model_runner import ModelRunner
from week2_serving.engine.scheduler import ScheduledBatch
from week2_serving.engine.sequence import Sequence
from week2_serving.engine.spec.rejection import probs_from_logits


@dataclass
class DraftView:
    """What the runner's `prepare` reads of a sequence, as the draft model sees it."""

    tokens: list[int]
    num_computed: int
    block_table: list[int]
    spec_tokens: list[int] = field(default_factory=list)


@dataclass
class Guess:
    tokens: list[int]  # the proposed tokens
    q: torch.Tensor | None  # (k, V) the distributions they were drawn from; None when greedy


class DraftProposer:
    def __init__(
        self, model, num_blocks: int, block_size: int, device, dtype, max_model_len: int
    ):  # model: the draft's HF folder
        self.runner = ModelRunner(model, num_blocks, block_size, device, dtype, max_model_len)
        self.vocab_size = self.runner.cfg.vocab_size
        self.computed: dict[int, tuple[int, int]] = {}  # seq_id -> (num_preemptions, positions)

    def _start(self, seq: Sequence) -> int:
        """First position the draft's pool lacks (a preemption resets it to the target's)."""
        epoch, n = self.computed.get(seq.seq_id, (-1, 0))
        return min(n, seq.num_computed) if epoch == seq.num_preemptions else seq.num_computed

    def rollback(self, seq: Sequence, num_kept: int) -> None:
        """The target kept `num_kept` positions; the draft's K/V past them are rejected too."""
        epoch, n = self.computed.get(seq.seq_id, (seq.num_preemptions, 0))
        self.computed[seq.seq_id] = (epoch, min(n, num_kept))

    def forget_except(self, live: set[int]) -> None:
        for seq_id in [s for s in self.computed if s not in live]:
            del self.computed[seq_id]

    @torch.inference_mode()
    def propose(
        self,
        batch: ScheduledBatch,
        budgets: dict[int, int],  # seq_id -> most tokens to guess (0: mirror only)
        generators: dict[int, torch.Generator],  # seq_id -> its generator (sampled requests)
    ) -> dict[int, Guess]:
        views, nums, want = [], [], []
        for seq, n in zip(batch.seqs, batch.num_tokens):
            start = self._start(seq)
            end = min(seq.num_computed + n, len(seq))  # not the lookahead slots
            views.append(DraftView(seq.tokens, start, seq.block_table))
            nums.append(end - start)
            want.append(bool(budgets.get(seq.seq_id)))
            self.computed[seq.seq_id] = (seq.num_preemptions, end)
        first = ScheduledBatch(views, nums, want, batch.copies)
        logits = self.runner.execute(first)  # (S, V) one row per speculating sequence
        spec = [s for s, w in zip(batch.seqs, want) if w]
        guesses = {s.seq_id: Guess([], None) for s in spec}
        for step in range(max((budgets[s.seq_id] for s in spec), default=0)):
            if step:  # feed the previous guess of every sequence still guessing
                live = [s for s in spec if budgets[s.seq_id] > step]
                views = [
                    DraftView(s.tokens + guesses[s.seq_id].tokens, len(s) - 1 + step, s.block_table)
                    for s in live
                ]
                logits = self.runner.execute(
                    ScheduledBatch(views, [1] * len(live), [True] * len(live))
                )
                spec = live
                for s in live:
                    epoch, n = self.computed[s.seq_id]
                    self.computed[s.seq_id] = (epoch, n + 1)
            for row, s in enumerate(spec):
                self._guess(guesses[s.seq_id], logits[row], s, generators.get(s.seq_id))
        return guesses

    def _guess(self, guess: Guess, logits: torch.Tensor, seq: Sequence, gen) -> None:
        """Append one guess drawn from the draft's (V,) logits: argmax, or a draw from q."""
        if seq.params.greedy:
            guess.tokens.append(int(logits.argmax()))
            return
        q = probs_from_logits(logits.float().cpu(), seq.params)  # (V,)
        guess.tokens.append(int(torch.multinomial(q, 1, generator=gen)))
        guess.q = q[None] if guess.q is None else torch.cat([guess.q, q[None]])
