"""Speculative decoding's parts alone: the rejection rule is lossless (and a broken one is
caught), the n-gram lookup, lookahead slots and their rollback, the config's checks."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import chi2

from week2_serving.engine.block_manager import BlockManager
from week2_serving.engine.scheduler import Scheduler, SchedulerConfig
from week2_serving.engine.sequence import SamplingParams, Sequence
from week2_serving.engine.spec import rejection
from week2_serving.engine.spec.config import SpecConfig
from week2_serving.engine.spec.metrics import theory_acceptance_length
from week2_serving.engine.spec.ngram import NgramProposer
from week2_serving.engine.spec.rejection import (
    greedy_accept,
    one_hot_probs,
    probs_from_logits,
    rejection_sample,
)

# --- the rejection rule: lossless ----------------------------------------------------------------
P = torch.tensor([0.05, 0.40, 0.10, 0.25, 0.15, 0.05])  # the target's distribution, V = 6
Q = torch.tensor([0.30, 0.10, 0.30, 0.10, 0.10, 0.10])  # a proposer that disagrees with it
TRIALS, K, SIGNIFICANCE = 4000, 3, 1e-3  # P(false alarm) = 1e-3 per test


def emitted(q: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Counts (V,) of the first and the second emitted token over TRIALS seeded rounds of k
    guesses drawn from q, verified against P at every position."""
    gen = torch.Generator().manual_seed(seed)
    first, second = torch.zeros(len(P)), torch.zeros(len(P))
    p, qs = P.expand(K + 1, -1), q.expand(K, -1)
    for _ in range(TRIALS):
        draft = torch.multinomial(qs, 1, generator=gen).squeeze(-1).tolist()
        out = rejection_sample(p, qs, draft, gen)
        first[out[0]] += 1
        if len(out) > 1:
            second[out[1]] += 1
    return first, second


def chi_square_p_value(counts: torch.Tensor, probs: torch.Tensor) -> float:
    expected = probs * counts.sum()
    stat = float(((counts - expected) ** 2 / expected).sum())
    return float(chi2.sf(stat, df=len(probs) - 1))


@pytest.mark.parametrize("proposer", ["distribution", "point mass"])
def test_emitted_tokens_follow_the_target(proposer):
    q = Q if proposer == "distribution" else one_hot_probs([2], len(P))[0]
    first, second = emitted(q)
    assert chi_square_p_value(first, P) > SIGNIFICANCE
    assert second.sum() > TRIALS / 10  # some rounds accepted the first guess
    assert chi_square_p_value(second, P) > SIGNIFICANCE


def test_a_broken_rule_is_caught(monkeypatch):
    """Accept every guess (u = 0 < p/q always): the output follows q, and the test says so."""
    monkeypatch.setattr(rejection.torch, "rand", lambda n, generator=None: torch.zeros(n))
    first, _ = emitted(Q)
    assert chi_square_p_value(first, P) < SIGNIFICANCE


def test_greedy_accept_keeps_the_agreeing_prefix():
    assert greedy_accept([4, 5, 6, 7], [4, 5, 6]) == [4, 5, 6, 7]  # all + bonus
    assert greedy_accept([4, 5, 6, 7], [4, 9, 6]) == [4, 5]  # replacement at the first miss
    assert greedy_accept([4, 5], [1]) == [4]


def test_filters_shape_both_distributions():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    probs = probs_from_logits(logits, SamplingParams(temperature=1.0, top_k=2))
    assert probs[0, 2:].sum() == 0 and math.isclose(float(probs.sum()), 1.0, rel_tol=1e-6)
    sharp = probs_from_logits(logits, SamplingParams(temperature=0.1))
    assert float(sharp[0, 0]) > float(probs[0, 0])


def test_theory_acceptance_length():
    assert theory_acceptance_length(0.0, 3) == 1.0
    assert theory_acceptance_length(1.0, 3) == 4.0
    assert math.isclose(theory_acceptance_length(0.5, 2), 1.75)


# --- n-gram lookup ------------------------------------------------------------------------------
def test_ngram_copies_the_continuation_of_the_longest_latest_match():
    ng = NgramProposer(1, 3)
    assert ng.propose([5, 6, 7, 8, 5, 6], 3) == [7, 8, 5]
    assert ng.propose([1, 2, 9, 1, 2, 3, 1, 2], 2) == [3, 1]  # the latest match wins
    assert ng.propose([7, 1, 2, 7, 9, 2], 2) == [7, 9]  # n=1 when nothing longer matches
    assert ng.propose([1, 2, 1, 2], 5) == [1, 2, 1, 2, 1]  # a repeat continues itself
    assert ng.propose([1, 2, 3], 4) == [] and ng.propose([1], 2) == []
    assert NgramProposer(2, 3).propose([7, 1, 2, 7, 9, 2], 2) == []  # n=1 not allowed


# --- lookahead slots and their rollback ----------------------------------------------------------
def test_lookahead_slots_and_truncate_keep_the_books():
    bm = BlockManager(num_blocks=8, block_size=4)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=64, num_lookahead_slots=3), bm)
    s = Sequence(list(range(6)), SamplingParams(max_tokens=20))
    sched.add(s)
    batch = sched.schedule()  # prefill: no lookahead
    assert batch.num_tokens == [6]
    sched.update(batch, {s.seq_id: 50})
    batch = sched.schedule()  # decode: 1 + 3 slots, positions 6..9
    assert batch.num_tokens == [4] and batch.sample == [True] and len(s.block_table) == 3
    bm.truncate(s, s.num_computed + 1)  # every guess rejected: keep position 6 only
    batch.num_tokens[0] = 1
    assert len(s.block_table) == 2
    bm.check_invariants([s])
    sched.update(batch, {s.seq_id: 51})
    assert s.num_computed == 7 and len(s.block_hashes) == 1  # block 1 not full yet: no key
    bm.check_invariants([s])
    assert all(b.hash is None for b in bm.blocks if b.block_id not in s.block_table[:1])


def test_lookahead_never_passes_max_tokens_and_yields_to_blocks():
    bm = BlockManager(num_blocks=2, block_size=4)
    sched = Scheduler(SchedulerConfig(num_lookahead_slots=5), bm)
    s = Sequence(list(range(6)), SamplingParams(max_tokens=3))
    sched.add(s)
    sched.update(sched.schedule(), {s.seq_id: 50})
    assert sched.schedule().num_tokens == [2]  # 1 + (max_tokens - outputs - 1)
    # a pool with no free block: the lookahead is dropped before anyone is preempted for it
    bm2 = BlockManager(num_blocks=4, block_size=4)
    sched2 = Scheduler(SchedulerConfig(num_lookahead_slots=4), bm2)
    t = Sequence(list(range(7)), SamplingParams(max_tokens=9))
    u = Sequence(list(range(8)), SamplingParams(max_tokens=2))
    sched2.add(t)
    sched2.add(u)
    sched2.update(sched2.schedule(), {t.seq_id: 50, u.seq_id: 50})
    assert bm2.num_free_blocks == 0
    batch = sched2.schedule()
    assert batch.seqs[0] is t and batch.num_tokens[0] == 1 and t not in batch.preempted


# --- config --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kw",
    [
        {"method": "medusa"},
        {"num_speculative_tokens": 0},
        {"num_speculative_tokens": True},
        {"num_speculative_tokens": 10**9},
        {"num_speculative_tokens": float("nan")},
        {"ngram_min": 3, "ngram_max": 2},
        {"ngram_min": -1},
        {"method": "draft"},
    ],
)
def test_hostile_spec_configs_are_refused(kw):
    with pytest.raises(ValueError, match="spec|method|draft"):
        SpecConfig(**kw)


@pytest.mark.parametrize(
    "argv", [["--num-speculative-tokens", str(2**64)], ["--spec-ngram-min", "-1"]]
)
def test_hostile_spec_flags_are_refused_even_with_speculation_off(argv):
    from week2_serving.engine.server import parse_args

    with pytest.raises(SystemExit):  # a usage error naming the flag, before weights load
        parse_args(["--model", "m", *argv])
