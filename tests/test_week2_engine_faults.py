"""Week 2b: the engine under pressure and faults: a bounded queue, abort, local failures."""

from __future__ import annotations

import pytest

from week2_serving.engine.errors import EngineFull
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.sampler import Sampler
from week2_serving.engine.sequence import SamplingParams, Sequence

PROMPTS = ["The list type", "import", "A dictionary is a mapping object that", "x", "for"]


@pytest.fixture(scope="module")
def make(tiny_gpt):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt["hf_dir"])

    def make(**kw) -> LLMEngine:
        return LLMEngine(
            EngineConfig(model=tiny_gpt["hf_dir"], **{"num_blocks": 128, "dtype": "float32", **kw}),
            tok,
        )

    return make


def params(n: int = 10) -> SamplingParams:
    return SamplingParams(max_tokens=n, ignore_eos=True)


def run(eng: LLMEngine, prompts=PROMPTS, ids=None) -> dict[str, list]:
    """Add the prompts (as request ids `ids`), step to the end, return every request's outputs."""
    for i, p in enumerate(prompts):
        eng.add_request(p, params(), request_id=ids[i] if ids else None)
    outs: dict[str, list] = {}
    while eng.has_unfinished():
        for o in eng.step():
            outs.setdefault(o.request_id, []).append(o)
    return outs


def tokens(outs: list) -> list[int]:
    return [t for o in outs for t in o.new_token_ids]


@pytest.fixture(scope="module")
def reference(make) -> dict[str, list[int]]:
    outs = run(make(), ids=[f"r{i}" for i in range(len(PROMPTS))])
    return {rid: tokens(o) for rid, o in outs.items()}


# --- a bounded waiting queue -----------------------------------------------------------------
def test_full_waiting_queue_refuses_with_a_retry_estimate(make):
    eng = make(max_num_waiting=2)
    eng.add_request("import", params())
    eng.add_request("x", params())
    with pytest.raises(EngineFull, match="2 requests are already waiting") as err:
        eng.add_request("for", params())
    assert err.value.retry_after > 0 and err.value.num_waiting == 2
    assert len(eng.scheduler.waiting) == 2 and len(eng.requests) == 2  # nothing was queued
    eng.step()  # both admitted: the queue has room again
    eng.add_request("for", params())
    assert eng.is_full() is False


def test_generate_feeds_more_prompts_than_the_queue_holds(make, reference):
    outs = make(max_num_waiting=2, max_num_seqs=2).generate(PROMPTS, params(), use_tqdm=False)
    assert [o.token_ids for o in outs] == [reference[f"r{i}"] for i in range(len(PROMPTS))]


def test_bad_config_values_are_named(make):
    with pytest.raises(ValueError, match="max_num_waiting=-1"):
        EngineConfig(max_num_waiting=-1)
    with pytest.raises(ValueError, match="scheduling='fast': use one of continuous, static"):
        EngineConfig(scheduling="fast")


# --- abort -----------------------------------------------------------------------------------
def test_abort_frees_every_block_running_mid_prefill_waiting_and_shared(make):
    eng = make(block_size=4, max_num_seqs=2, max_num_batched_tokens=8)
    bm = eng.block_manager
    long = list(range(10, 30))  # 20 tokens: prefilled over 3 steps
    a = eng.add_request(long, SamplingParams(max_tokens=50, ignore_eos=True))
    while a.num_computed < len(long):
        eng.step()
    b = eng.add_request(long[:12] + list(range(40, 60)), params())  # shares a's first 3 blocks
    c = eng.add_request("import", params())  # max_num_seqs=2: stays waiting
    eng.step()
    assert b.num_cached_prompt == 12 and 12 < b.num_computed < len(b)  # mid-prefill
    assert bm.blocks[b.block_table[0]].ref_count == 2 and c in eng.scheduler.waiting
    assert bm.num_used_blocks > 0
    for seq in (b, c, a):  # mid-prefill, waiting, decoding
        assert eng.abort(seq.request_id) and seq.finish_reason == "abort"
        bm.check_invariants([s for s in (a, b, c) if not s.is_finished])
    assert bm.num_used_blocks == 0 and not eng.has_unfinished()
    assert bm.num_cached_free_blocks > 0  # the computed prefix stays cached for later
    assert eng.abort(a.request_id) is False  # already gone


# --- faults stay local where they can ---------------------------------------------------------
def check_only_bad_failed(eng, outs, reference, what: str) -> None:
    bad = outs["bad"][-1]
    assert bad.finished and bad.finish_reason == "error" and what in bad.error
    assert bad.new_token_ids == []
    for rid, ref in reference.items():
        if rid != "r1":
            assert tokens(outs[rid]) == ref, rid
            assert outs[rid][-1].finish_reason == "length" and outs[rid][-1].error is None
    assert eng.block_manager.num_used_blocks == 0 and not eng.has_unfinished()
    assert eng.stats()["requests_failed"] == 1


def test_a_failing_stop_check_fails_that_request_only(make, reference, monkeypatch):
    original = Sequence.append_token

    def append_token(self, token_id):
        original(self, token_id)
        if self.request_id == "bad" and self.num_output_tokens == 3:
            raise KeyError("stop check broke")

    monkeypatch.setattr(Sequence, "append_token", append_token)
    eng = make()
    ids = [f"r{i}" for i in range(len(PROMPTS))]
    ids[1] = "bad"
    outs = run(eng, ids=ids)
    assert len(tokens(outs["bad"])) == 2  # two tokens came out before the fault
    check_only_bad_failed(eng, outs, reference, "KeyError: 'stop check broke'")


class FaultySampler(Sampler):
    """Raises for any batch holding the request called "bad", from its 4th token on."""

    def __call__(self, logits, seqs):
        if any(s.request_id == "bad" and s.num_output_tokens >= 3 for s in seqs):
            raise ValueError("NaN in the sampler row")
        return super().__call__(logits, seqs)


def test_a_failing_sampler_row_fails_that_request_only(make, reference):
    eng = make()
    eng.sampler = FaultySampler()
    ids = [f"r{i}" for i in range(len(PROMPTS))]
    ids[1] = "bad"
    outs = run(eng, ids=ids)
    assert len(tokens(outs["bad"])) == 3
    check_only_bad_failed(eng, outs, reference, "ValueError: NaN in the sampler row")


def test_a_fault_in_the_batched_forward_is_the_engines(make, monkeypatch):
    eng = make()
    eng.add_request("import", params())
    eng.step()

    def broken(inputs):
        raise RuntimeError("CUDA error: an illegal memory access")

    monkeypatch.setattr(eng.runner, "forward", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        eng.step()
