"""Speculative decoding in the engine's step: propose -> one verify forward -> accept -> append.

    engine = LLMEngine(EngineConfig(model=..., speculative=SpecConfig("ngram", 3)))

Where it enters the step (llm_engine.LLMEngine.step):
1. the scheduler gives each decoding sequence k lookahead slots (`num_lookahead_slots`), so
   the batch computes 1 + k tokens of it: its last sampled token and k guesses;
2. `propose` fills `seq.spec_tokens` with up to k guesses (n-gram lookup or the draft model)
   and shrinks the sequence's `num_tokens` to 1 + the guesses it got;
3. the target runs its usual single forward pass; the runner returns the logits of the last
   1 + k rows of a speculating sequence (every position is verified at once);
4. `accept` applies the rejection rule (rejection.py) per sequence, appends the accepted
   guesses, returns the replacement / bonus token as the step's sampled token, rolls the
   rejected positions back out of the block table (`BlockManager.truncate`, the draft's pool
   too) and sets `num_tokens` to the tokens kept, so `Scheduler.update` counts only those.

Rejected positions are never counted as computed, so they never enter a full prefix-cache
block; their stale K/V in a kept block sit past `num_computed` and are overwritten later.
Requests with logprobs, or whose stop tokens are still masked (min_tokens), decode plainly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from common.hub import is_offline, resolve_model
from common.results import get_logger
from week2_serving.engine.block_manager import BlockManager
from week2_serving.engine.model_runner import ModelRunner
from week2_serving.engine.models import load_config
from week2_serving.engine.sampler import Sampler
from week2_serving.engine.scheduler import ScheduledBatch, fail
from week2_serving.engine.sequence import Sequence
from week2_serving.engine.spec.config import SpecConfig
from week2_serving.engine.spec.draft import DraftProposer, Guess
from week2_serving.engine.spec.metrics import SpecMetrics
from week2_serving.engine.spec.ngram import NgramProposer
from week2_serving.engine.spec.rejection import (
    greedy_accept,
    one_hot_probs,
    probs_from_logits,
    rejection_sample,
)

log = get_logger("week2.engine.spec")
SampleFn = Callable[[torch.Tensor, list[Sequence]], dict[int, int]]


class SpecDecoder:
    def __init__(
        self,
        config: SpecConfig,
        block_manager: BlockManager,
        sampler: Sampler,
        metrics: SpecMetrics,
        vocab_size: int,
        draft: DraftProposer | None = None,
    ):
        self.config, self.bm, self.sampler, self.metrics = config, block_manager, sampler, metrics
        self.vocab_size = vocab_size
        self.ngram = NgramProposer(config.ngram_min, config.ngram_max)
        self.draft = draft
        self.q: dict[int, torch.Tensor | None] = {}  # seq_id -> this step's draft distributions

    @staticmethod
    def speculates(seq: Sequence) -> bool:
        """Logprobs, masked stop tokens and a grammar (structured output) are the plain
        sampler's business: such a sequence decodes one token a step, with no guesses."""
        return seq.params.logprobs is None and not Sampler.banned(seq) and seq.grammar is None

    def _generator(self, seq: Sequence) -> torch.Generator | None:
        return None if seq.params.greedy else self.sampler._generator(seq)

    # --- before the forward pass ---------------------------------------------------------------
    def propose(self, batch: ScheduledBatch, running: list[Sequence]) -> None:
        """Fill the guesses of every sequence given lookahead slots; shrink what is unused."""
        extra = [seq.num_computed + n - len(seq) for seq, n in zip(batch.seqs, batch.num_tokens)]
        budgets = {
            seq.seq_id: e if self.speculates(seq) else 0
            for seq, e in zip(batch.seqs, extra)
            if e > 0
        }
        if self.draft is not None:
            self.draft.forget_except({s.seq_id for s in running})
            gens = {s.seq_id: self._generator(s) for s in batch.seqs if budgets.get(s.seq_id)}
            guesses = self.draft.propose(batch, budgets, gens)
        else:
            guesses = {
                s.seq_id: Guess(self.ngram.propose(s.tokens, budgets[s.seq_id]), None)
                for s in batch.seqs
                if budgets.get(s.seq_id)
            }
        for i, (seq, e) in enumerate(zip(batch.seqs, extra)):
            if e > 0:
                guess = guesses.get(seq.seq_id, Guess([], None))
                seq.spec_tokens = guess.tokens
                self.q[seq.seq_id] = guess.q
                batch.num_tokens[i] -= e - len(guess.tokens)
                self.bm.truncate(seq, len(seq) + len(guess.tokens))  # unused slots back

    # --- after the forward pass ----------------------------------------------------------------
    def accept(
        self, logits: torch.Tensor, batch: ScheduledBatch, sample: SampleFn
    ) -> dict[int, int]:
        """seq_id -> the step's last new token, as `LLMEngine._sample` gives; the accepted
        guesses before it are already appended. Rows of plain sequences go to `sample`."""
        plain_rows, plain_seqs, spec = [], [], []
        row = 0
        for i, (seq, want) in enumerate(zip(batch.seqs, batch.sample)):
            if not want:
                continue
            r = 1 + len(seq.spec_tokens)
            if seq.spec_tokens:
                spec.append((i, seq, logits[row : row + r]))
            else:
                plain_rows.append(row)
                plain_seqs.append(seq)
            row += r
        sampled = sample(logits[plain_rows], plain_seqs) if plain_seqs else {}
        for i, seq, rows in spec:
            try:
                token = self._accept_one(i, seq, rows, batch)
            except Exception as e:  # this request's fault only: fail it, not the step
                log.exception("request %s failed in speculative acceptance", seq.request_id)
                fail(seq, e)
                continue
            finally:
                seq.spec_tokens = []
            if token is not None:
                sampled[seq.seq_id] = token
        self.q.clear()
        return sampled

    def _accept_one(
        self, i: int, seq: Sequence, rows: torch.Tensor, batch: ScheduledBatch
    ) -> int | None:
        """Verify one sequence's guesses against its (1 + k, V) logits; roll back the rest."""
        guesses = seq.spec_tokens
        if seq.params.greedy:
            tokens = greedy_accept(rows.argmax(-1).tolist(), guesses)
        else:
            p = probs_from_logits(rows.float().cpu(), seq.params)  # (1 + k, V)
            q = self.q.get(seq.seq_id)
            q = one_hot_probs(guesses, self.vocab_size) if q is None else q  # (k, V)
            tokens = rejection_sample(p, q, guesses, self._generator(seq))
        accepted = len(tokens) - 1
        self.metrics.observe(len(guesses), accepted)
        kept = seq.num_computed + 1 + accepted  # positions whose K/V are right
        self.bm.truncate(seq, kept)
        if self.draft is not None:
            self.draft.rollback(seq, kept)
        batch.num_tokens[i] = 1 + accepted  # what Scheduler.update counts as computed
        for token in tokens[:-1]:
            seq.append_token(token)
            if seq.is_finished:  # a stop token or max_tokens among the accepted guesses
                return None
        return tokens[-1]


def make_spec_decoder(engine) -> SpecDecoder:
    """The decoder of an `LLMEngine` (its config's `speculative`); for `draft`, loads the draft
    model beside the target's runner (same vocabulary and at least the target's context
    length, or a clear error)."""
    config: SpecConfig = engine.config.speculative
    runner: ModelRunner = engine.runner
    offline = is_offline(engine.config.offline)
    m = engine.metrics
    metrics = SpecMetrics(m.registry, m.model_name, config.num_speculative_tokens)
    vocab = runner.cfg.vocab_size
    draft = None
    if config.method == "draft":
        folder = resolve_model(config.draft_model, offline)  # a folder or a hub id
        dcfg = load_config(folder)
        if dcfg.vocab_size != vocab:
            raise ValueError(
                f"draft model {config.draft_model} has a vocabulary of {dcfg.vocab_size}, "
                f"the target {vocab}: the draft must share the target's tokenizer"
            )
        if dcfg.max_model_len < engine.max_model_len:
            raise ValueError(
                f"draft model {config.draft_model} reads {dcfg.max_model_len} positions, the "
                f"target {engine.max_model_len}: use a draft with at least the target's context"
            )
        draft = DraftProposer(
            folder, runner.num_blocks, runner.block_size, runner.device, runner.dtype,
            engine.max_model_len,
        )  # fmt: skip
    return SpecDecoder(config, engine.block_manager, engine.sampler, metrics, vocab, draft)
