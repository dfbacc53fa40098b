"""Week 2b: overlap scheduling (engine/overlap.py) against the plain step loop.

The next decode step is planned in a helper thread while the current forward pass runs; a
plan is used only where it is what the scheduler would build. Its plain reference is the same
engine without the flag: identical tokens (greedy and seeded), through chunked prefills,
prefix hits, preemption, EOS finishes and aborts, with plans used and plans dropped.
"""

from __future__ import annotations

import pytest

from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.sequence import SamplingParams

PROMPTS = [[5, 9, 13, 17], [7, 3, 11, 40, 41, 42, 43, 44, 45, 46], [5, 9, 13, 17, 21, 34], [300]]
TIGHT = dict(num_blocks=12, block_size=4, max_num_batched_tokens=16, max_num_seqs=4)
ROOMY = dict(num_blocks=256, block_size=4, max_num_seqs=8)


def engine(tiny_gpt, **kw) -> LLMEngine:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt["hf_dir"])
    return LLMEngine(EngineConfig(model=tiny_gpt["hf_dir"], device="cpu", **kw), tokenizer=tok)


def params() -> list[SamplingParams]:
    """Seeded sampling (the tiny model's greedy outputs soon repeat one token, which would hide
    a wrong input id) and one greedy row; different lengths, so requests finish mid-plan."""
    out = [
        SamplingParams(max_tokens=m, temperature=1.0, seed=i, ignore_eos=True)
        for i, m in enumerate((21, 9, 30, 14))
    ]
    out[1] = SamplingParams(max_tokens=9, ignore_eos=True)
    return out


@pytest.mark.parametrize("layout", [TIGHT, ROOMY], ids=["tight", "roomy"])
@pytest.mark.parametrize("paged", [False, None], ids=["sdpa", "default"])
def test_overlap_gives_the_tokens_of_the_plain_loop(tiny_gpt, layout, paged):
    ref = engine(tiny_gpt, **layout, paged_kernel=paged).generate(PROMPTS, params(), False)
    eng = engine(tiny_gpt, **layout, paged_kernel=paged, overlap_scheduling=True)
    out = eng.generate(PROMPTS, params(), use_tqdm=False)
    assert [o.token_ids for o in out] == [r.token_ids for r in ref]
    ov = eng.overlap
    assert ov.used > 10, (ov.used, ov.dropped)  # steady decode steps ran from plans
    assert ov.dropped >= 1  # a sequence finished under a plan at least once (lengths differ)
    assert eng.stats()["kv_blocks_used"] == 0  # reserved slots of finished sequences freed
    if layout is TIGHT:
        assert eng.stats()["preemptions"] > 0


def test_a_request_that_stops_on_eos_or_is_aborted_drops_the_plan(tiny_gpt):
    """Stops the scheduler cannot see coming (an EOS token, an abort between steps): the plan
    made for them is dropped and the others' tokens are those of the plain loop."""
    ref_eng = engine(tiny_gpt, **ROOMY)
    eng = engine(tiny_gpt, **ROOMY, overlap_scheduling=True)
    # EOS: whatever token the greedy run emits at step 5 of request 0 becomes its stop token
    probe = ref_eng.generate(PROMPTS[:1], SamplingParams(max_tokens=6, ignore_eos=True), False)
    stop = probe[0].token_ids[5]
    ps = params()
    ps[0] = SamplingParams(max_tokens=21, stop_token_ids=[stop])
    outs = {}
    for e in (ref_eng, eng):
        seqs = [e.add_request(p, sp) for p, sp in zip(PROMPTS, ps)]
        for _ in range(8):
            e.step()
        e.abort(seqs[1].request_id)  # mid-run, between two steps
        while e.has_unfinished():
            e.step()
        outs[e is eng] = [s.output_token_ids for s in seqs]
        assert seqs[0].finish_reason == "stop"
        assert e.stats()["kv_blocks_used"] == 0
    assert outs[True] == outs[False]
    assert eng.overlap.dropped >= 2 and eng.overlap.used > 5


@pytest.mark.parametrize(
    "bad",
    [dict(scheduling="static"), dict(speculative="ngram")],
)
def test_overlap_is_refused_where_it_does_not_apply(tiny_gpt, bad):
    if "speculative" in bad:
        from week2_serving.engine.spec.config import SpecConfig

        bad = dict(speculative=SpecConfig(method="ngram", num_speculative_tokens=2))
    with pytest.raises(ValueError, match="overlap_scheduling"):
        EngineConfig(model=tiny_gpt["hf_dir"], device="cpu", overlap_scheduling=True, **bad)


def test_a_failing_plan_is_only_a_plan_lost(tiny_gpt, monkeypatch):
    eng = engine(tiny_gpt, **ROOMY, overlap_scheduling=True)

    def broken(batch):
        raise RuntimeError("planner bug")

    monkeypatch.setattr(eng.overlap, "_plan", broken)
    ref = engine(tiny_gpt, **ROOMY).generate(PROMPTS, params(), use_tqdm=False)
    out = eng.generate(PROMPTS, params(), use_tqdm=False)
    assert [o.token_ids for o in out] == [r.token_ids for r in ref]
    assert eng.overlap.used == 0
