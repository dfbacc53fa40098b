"""The one sampling rule (week1_gpt_kvcache/sampling.py), used by week 1 and the engine."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.test_week1_model import PROMPTS, tiny_model
from week1_gpt_kvcache.generate import generate
from week1_gpt_kvcache.sampling import (
    GREEDY_BELOW,
    SamplingParams,
    choice_seed,
    filter_logits,
    make_generator,
    sample,
    token_logprobs,
)
from week2_serving.engine.sampler import Sampler
from week2_serving.engine.sequence import Sequence


@pytest.mark.parametrize(
    "kw,fragment",
    [
        ({"max_tokens": 0}, "max_tokens=0"),
        ({"max_tokens": 2.0}, "max_tokens=2.0 must be an integer"),
        ({"temperature": -1}, "temperature=-1"),
        ({"temperature": math.nan}, "temperature=nan must be a finite"),
        ({"temperature": math.inf}, "temperature=inf"),
        ({"temperature": 101.0}, "temperature=101.0"),
        ({"top_p": 0}, "top_p=0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"top_p": -math.inf}, "top_p=-inf"),
        ({"top_k": -1}, "top_k=-1 must be >= 0"),
        ({"top_k": True}, "top_k=True must be an integer"),
        ({"seed": 2**64}, "seed=18446744073709551616"),
        ({"seed": -(2**63) - 1}, "seed="),
        ({"seed": 1.5}, "seed=1.5"),
        ({"min_tokens": 17}, "min_tokens=17 must be in [0, max_tokens]"),
        ({"logprobs": 21}, "logprobs=21"),
        ({"logprobs": -1}, "logprobs=-1"),
        ({"n": 0}, "n=0"),
        ({"n": 17}, "n=17"),
        ({"stop_token_ids": [-3]}, "stop_token_ids"),
        ({"ignore_eos": 1}, "ignore_eos=1"),
    ],
)
def test_bad_params_are_refused_naming_the_value(kw, fragment):
    with pytest.raises(ValueError, match=fragment.replace("[", r"\[").replace("(", r"\(")):
        SamplingParams(**kw)


def test_edges_of_the_valid_range():
    assert SamplingParams(temperature=GREEDY_BELOW / 2).greedy
    assert not SamplingParams(temperature=GREEDY_BELOW).greedy
    for seed in (-(2**63), 0, 2**64 - 1):
        make_generator(SamplingParams(seed=seed).seed)  # torch takes the whole range
    assert SamplingParams(stop_token_ids=[3, 4]).stop_token_ids == (3, 4)


def test_choices_derive_distinct_deterministic_seeds():
    params = SamplingParams(n=4, seed=7, temperature=1.0)
    seeds = [c.seed for c in params.choices()]
    assert seeds[0] == 7 and len(set(seeds)) == 4 and all(c.n == 1 for c in params.choices())
    assert seeds == [c.seed for c in params.choices()]
    assert all(0 <= choice_seed(2**64 - 1, i) < 2**64 for i in range(1, 5))
    assert [c.seed for c in SamplingParams(n=2).choices()] == [None, None]


def test_top_k_and_top_p_filters():
    logits = torch.tensor([3.0, 1.0, 2.0, 0.0])
    assert torch.isinf(filter_logits(logits, 2, 1.0)).tolist() == [False, True, False, True]
    # probs ~ [0.64, 0.09, 0.24, 0.03]: top_p 0.7 keeps the first two ranked (0.64, then 0.24)
    kept = ~torch.isinf(filter_logits(logits, 0, 0.7))
    assert kept.tolist() == [True, False, True, False]
    assert (~torch.isinf(filter_logits(logits, 0, 0.5))).sum() == 1  # the top token always stays
    assert torch.equal(filter_logits(logits, 0, 1.0), logits)  # 0 and 1.0: off
    batch = torch.tensor([[1.0, 3.0, 2.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    assert torch.isinf(filter_logits(batch, 1)).sum(-1).tolist() == [3, 3]  # per row


def test_sampling_filters_in_a_batch():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]]).repeat(200, 1)
    gen = torch.Generator().manual_seed(0)
    top1 = sample(logits, SamplingParams(temperature=1.0, top_k=1), gen)
    assert torch.equal(top1, torch.ones(200).long())
    top2 = sample(logits, SamplingParams(temperature=1.0, top_k=2), gen)
    assert set(top2.tolist()) == {1, 2}
    nucleus = sample(logits, SamplingParams(temperature=1.0, top_p=0.7), gen)
    assert set(nucleus.tolist()) == {1, 2}  # token 1 (0.64) then token 2 reaches 0.88


def test_seeded_generation_with_cache_equals_without():
    model = tiny_model("gpt2")
    sp = SamplingParams(max_tokens=15, temperature=1.0, top_p=0.9, seed=7)
    assert (
        generate(model, PROMPTS, sp).tokens == generate(model, PROMPTS, sp, use_cache=False).tokens
    )


def test_min_tokens_masks_the_stop_tokens_in_week1_generate():
    model = tiny_model("llama")
    free = generate(model, PROMPTS[:1], SamplingParams(max_tokens=30)).tokens[0]
    stop = free[2]
    cut = generate(model, PROMPTS[:1], SamplingParams(max_tokens=30, stop_token_ids=(stop,)))
    assert cut.tokens[0] == free[: free.index(stop)]
    late = SamplingParams(max_tokens=30, stop_token_ids=(stop,), min_tokens=10)
    assert stop not in generate(model, PROMPTS[:1], late).tokens[0][:10]


def test_engine_sampler_follows_its_distribution():
    sampler = Sampler()
    seqs = [Sequence([1], SamplingParams(temperature=1.0, seed=i)) for i in range(400)]
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1]])).repeat(400, 1)
    tokens = torch.tensor(sampler(logits, seqs))
    freq = torch.bincount(tokens, minlength=3).float() / 400
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.07)


def test_engine_sampler_masks_stops_before_min_tokens_and_records_logprobs():
    eos = 0
    logits = torch.tensor([[5.0, 1.0, 0.0]])
    seq = Sequence([1], SamplingParams(min_tokens=1, logprobs=2), eos_token_id=eos)
    assert Sampler()([logits][0], [seq]) == [1]  # EOS is the argmax, but masked
    lp = seq.output_logprobs[0]
    assert lp.token_id == 1 and lp.logprob == pytest.approx(float(logits.log_softmax(-1)[0, 1]))
    assert [t for t, _ in lp.top] == [0, 1]  # the model's own ranking, mask or not
    seq.append_token(1)
    assert Sampler()(logits, [seq]) == [eos]  # min_tokens reached: EOS may come


def test_token_logprobs_top_k_zero_and_all_masked_alternatives():
    row = torch.tensor([0.0, -math.inf, -math.inf])
    assert token_logprobs(row, 0, 0).top == [] and token_logprobs(row, 0, 0).logprob == 0.0
    assert len(token_logprobs(row, 0, 5).top) == 3  # k beyond the vocabulary: all of it


# --- property: valid params never make sampling raise, whatever the logits -----------------
HOSTILE = [0.0, -0.0, 1.0, -1.0, 1e-38, -1e-38, 3e38, -3e38, 1e30, -1e30, math.inf, -math.inf]
rows = st.lists(st.sampled_from(HOSTILE) | st.floats(-1e4, 1e4), min_size=1, max_size=12)
params = st.builds(
    SamplingParams,
    temperature=st.sampled_from([0.0, GREEDY_BELOW / 3, GREEDY_BELOW, 1e-3, 1.0, 100.0])
    | st.floats(0, 100),
    top_k=st.integers(0, 16),
    top_p=st.sampled_from([1e-9, 0.5, 1.0]) | st.floats(1e-6, 1.0),
    seed=st.integers(-(2**63), 2**64 - 1),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    row=rows,
    batch=st.integers(1, 3),
    p=params,
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
    one_finite=st.booleans(),
)
def test_sampling_never_raises_and_greedy_is_argmax(row, batch, p, dtype, one_finite):
    logits = torch.tensor(row, dtype=torch.float32)
    if one_finite:  # -inf everywhere but one token
        keep = len(row) // 2
        logits = torch.full_like(logits, -math.inf)
        logits[keep] = row[keep] if math.isfinite(row[keep]) else 0.0
    logits = logits.to(dtype).repeat(batch, 1)
    ids = sample(logits, p, make_generator(p.seed))
    assert ids.shape == (batch,) and ids.dtype == torch.long
    assert all(0 <= i < len(row) for i in ids.tolist())
    if p.greedy:
        assert torch.equal(ids, logits.argmax(-1))
    elif one_finite and torch.isfinite(logits[0, len(row) // 2]):  # it may overflow in 16 bits
        assert ids.tolist() == [len(row) // 2] * batch  # the only possible token
