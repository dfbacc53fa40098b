"""Week 2b speed levers: each one gives exactly what its plain reference gives.

The tiny model (tests/conftest.py `tiny_gpt`): a few layers, small width, vocabulary of 512, so
a whole engine run takes a second. Speed itself is measured by engine/levers.py, not here.
"""

from __future__ import annotations

import math

import pytest
import torch

from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.sampler import Sampler
from week2_serving.engine.sequence import SamplingParams, Sequence

PROMPTS = [
    "The list type",
    "A dictionary is a mapping object that",
    "x",
    "for loops in Python iterate over the items of any sequence, in the order that they appear",
    "The list type supports",  # shares a prefix with the first
    "A dictionary is a mapping object that maps",  # shares a prefix with the second
]
MAX_TOKENS = [5, 30, 17, 22, 9, 25]
# a small pool and token budget: prefills are chunked and the youngest request is preempted
TIGHT = dict(num_blocks=20, block_size=4, max_num_batched_tokens=16, max_num_seqs=4)
OFF = dict(fast_prepare=False, batched_sampling=False)


def engine(tiny_gpt, **overrides) -> LLMEngine:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt["hf_dir"])
    return LLMEngine(EngineConfig(model=tiny_gpt["hf_dir"], **overrides), tokenizer=tok)


def same_inputs(a, b) -> None:
    for name in ("ids", "positions", "slot_mapping", "sample_rows"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert len(a.groups) == len(b.groups)
    for ga, gb in zip(a.groups, b.groups):
        assert (ga.B, ga.T, ga.padded) == (gb.B, gb.T, gb.padded)
        for name in ("rows", "slots", "mask"):
            assert torch.equal(getattr(ga, name), getattr(gb, name)), name


def test_fast_prepare_builds_the_reference_inputs_at_every_step(tiny_gpt):
    """Chunked prefills, decodes, prefix-cache hits and a preemption: every step's inputs from
    the tensor-op planner equal the per-token loop's, field by field."""
    eng = engine(tiny_gpt, **TIGHT)
    runner, steps = eng.runner, []
    fast = runner.prepare

    def both(batch):
        ref, out = runner.prepare_reference(batch), fast(batch)
        same_inputs(out, ref)
        steps.append(len(batch))
        return out

    runner.prepare = both
    params = [SamplingParams(max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
    eng.generate(PROMPTS, params, use_tqdm=False)
    stats = eng.stats()
    assert stats["preemptions"] > 0 and stats["prefix_cache_hits_tokens"] > 0
    assert max(steps) > 1 and len(steps) > 20  # batched steps were compared, many of them


@pytest.mark.parametrize(
    "overrides",
    [TIGHT, dict(num_blocks=256, max_num_seqs=8), dict(TIGHT, one_decode_group=True)],
)
def test_levers_on_give_the_tokens_of_levers_off(tiny_gpt, overrides):
    """Greedy rows and seeded sampled rows: identical tokens with every lever on or off."""
    params = [SamplingParams(max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
    params[2] = SamplingParams(max_tokens=17, temperature=0.9, seed=7, ignore_eos=True)
    params[3] = SamplingParams(max_tokens=22, temperature=1.0, seed=3, top_k=5, ignore_eos=True)
    off = {**overrides, **OFF, "one_decode_group": False}
    ref = engine(tiny_gpt, **off).generate(PROMPTS, params, use_tqdm=False)
    out = engine(tiny_gpt, **overrides).generate(PROMPTS, params, use_tqdm=False)
    assert [o.token_ids for o in out] == [r.token_ids for r in ref]


def seq(**params) -> Sequence:
    return Sequence([1, 2, 3], SamplingParams(max_tokens=4, **params), eos_token_id=0)


def test_batched_draw_takes_only_plain_rows_and_follows_the_logits():
    s = Sampler()
    plain = seq(temperature=0.7)
    others = [
        seq(),  # greedy
        seq(temperature=0.7, seed=1),
        seq(temperature=0.7, top_k=3),
        seq(temperature=0.7, top_p=0.5),
        seq(temperature=0.7, logprobs=2),
        seq(temperature=0.7, min_tokens=2),  # its stop tokens are masked: per row
    ]
    assert s.is_plain(plain) and not any(s.is_plain(o) for o in others)
    V = 50
    logits = torch.full((4, V), -30.0)
    for row, tok in enumerate([7, 11, 3, 42]):
        logits[row, tok] = 30.0  # each row all but certain
    logits[2, 5] = math.nan  # a NaN logit is never drawn
    rows = [seq(temperature=t) for t in (0.5, 1.0, 2.0, 1.3)]
    assert s(logits, rows) == [7, 11, 3, 42]
    dead = torch.full((1, V), -math.inf)  # nothing to draw from: token 0, as the reference
    assert s(dead, [seq(temperature=1.0)]) == [0]


def test_batched_sampling_off_leaves_plain_rows_to_their_own_generators(monkeypatch):
    s = Sampler()
    s.batched = False
    monkeypatch.setattr(s, "draw", lambda *a: pytest.fail("the batched draw ran while off"))
    logits = torch.zeros(2, 20)
    logits[:, 4] = 40.0
    assert s(logits, [seq(temperature=1.0), seq()]) == [4, 4]
