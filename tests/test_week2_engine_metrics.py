"""Week 2b: the engine's Prometheus metrics count what happened, under vLLM's names."""

from __future__ import annotations

import threading
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.metrics import CONTENT_TYPE, EngineMetrics
from week2_serving.engine.sequence import SamplingParams

NAMES = [  # family names (counters without `_total`, which the samples carry)
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prefix_cache_queries",
    "vllm:prefix_cache_hits",
    "vllm:num_preemptions",
    "vllm:prompt_tokens",
    "vllm:generation_tokens",
    "vllm:request_success",
    "vllm:time_to_first_token_seconds",
    "vllm:inter_token_latency_seconds",
    "vllm:e2e_request_latency_seconds",
]


def parse(eng: LLMEngine) -> dict[tuple, float]:
    """{(sample name, finished_reason or None): value} for the engine's model, every label checked."""
    out = {}
    for family in text_string_to_metric_families(eng.metrics.exposition().decode()):
        assert family.documentation, family.name  # HELP text on each
        for s in family.samples:
            if s.name.endswith("_created"):
                continue
            assert s.labels["model_name"] == "tiny"
            key = (s.name, s.labels.get("finished_reason"), s.labels.get("le"))
            out[key] = s.value
    return out


def value(m: dict, name: str, reason: str | None = None) -> float:
    return m[(name, reason, None)]


@pytest.fixture(scope="module")
def make(tiny_gpt):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt["hf_dir"])

    def make(**kw) -> LLMEngine:
        cfg = {"num_blocks": 128, "block_size": 4, "served_model_name": "tiny", **kw}
        return LLMEngine(EngineConfig(model=tiny_gpt["hf_dir"], dtype="float32", **cfg), tok)

    return make


def test_every_metric_is_there_under_vllms_name(make):
    eng = make()
    families = {f.name for f in text_string_to_metric_families(eng.metrics.exposition().decode())}
    assert set(NAMES) <= families
    m = parse(eng)
    assert value(m, "vllm:request_success_total", "stop") == 0  # reasons exported at 0
    assert CONTENT_TYPE.startswith("text/plain")


def test_counts_match_what_happened(make):
    eng = make(max_num_seqs=1)
    shared = "The list type supports many operations"
    prompts = [shared, shared + " such as append", "import"]
    seqs = [
        eng.add_request(p, SamplingParams(max_tokens=6 + i, ignore_eos=True))
        for i, p in enumerate(prompts)
    ]
    eng.step()
    m = parse(eng)
    assert value(m, "vllm:num_requests_running") == 1
    assert value(m, "vllm:num_requests_waiting") == 2
    used = eng.block_manager.num_used_blocks / eng.block_manager.num_blocks
    assert value(m, "vllm:kv_cache_usage_perc") == pytest.approx(used) and used > 0
    aborted = eng.add_request("x", SamplingParams(max_tokens=3))
    eng.abort(aborted.request_id)
    while eng.has_unfinished():
        eng.step()
    m, bm = parse(eng), eng.block_manager
    outputs = sum(s.num_output_tokens for s in seqs)
    assert value(m, "vllm:generation_tokens_total") == outputs == 6 + 7 + 8
    assert value(m, "vllm:prompt_tokens_total") == sum(s.num_prompt_tokens for s in seqs)
    assert value(m, "vllm:prefix_cache_queries_total") == bm.prefix_queries
    assert value(m, "vllm:prefix_cache_hits_total") == bm.prefix_hits == seqs[1].num_cached_prompt
    assert bm.prefix_hits >= 4  # the second prompt found the first's blocks
    assert value(m, "vllm:request_success_total", "length") == 3
    assert value(m, "vllm:request_success_total", "abort") == 1
    assert value(m, "vllm:time_to_first_token_seconds_count") == 3
    assert value(m, "vllm:inter_token_latency_seconds_count") == outputs - 3
    assert value(m, "vllm:e2e_request_latency_seconds_count") == 3
    assert value(m, "vllm:e2e_request_latency_seconds_sum") > 0
    assert value(m, "vllm:num_requests_running") == value(m, "vllm:num_requests_waiting") == 0
    assert value(m, "vllm:kv_cache_usage_perc") == 0
    assert value(m, "vllm:num_preemptions_total") == 0


def test_preemptions_are_counted_under_a_tiny_kv_budget(make):
    eng = make(num_blocks=10, block_size=8, max_num_batched_tokens=16)
    prompts = ["The list type", "A dictionary is a mapping object that", "import", "x"]
    eng.generate(prompts, SamplingParams(max_tokens=30, ignore_eos=True), use_tqdm=False)
    m = parse(eng)
    assert value(m, "vllm:num_preemptions_total") == eng.scheduler.num_preemptions > 0


def test_rendering_from_another_thread_while_the_engine_steps(make):
    eng = make(max_num_seqs=4)
    stop, errors, renders = threading.Event(), [], [0]

    def render() -> None:
        while not stop.is_set():
            try:
                parse(eng)
                renders[0] += 1
            except Exception as e:  # any failure is the test's failure
                errors.append(e)
                return
            time.sleep(0.002)  # a scraper's pace: a busy loop would starve the engine (GIL)

    thread = threading.Thread(target=render)
    thread.start()
    try:
        prompts = ["The list type", "import", "x", "for", "A dict"] * 2
        eng.generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True), use_tqdm=False)
    finally:
        stop.set()
        thread.join()
    assert errors == [] and renders[0] > 10
    assert value(parse(eng), "vllm:generation_tokens_total") == 10 * 12


def test_each_engine_has_its_own_registry():
    a, b = EngineMetrics("m"), EngineMetrics("m")  # the same names twice: no clash
    a.generation_tokens.inc(3)
    assert b"vllm:generation_tokens_total" in a.exposition()
    assert 'vllm:generation_tokens_total{model_name="m"} 0.0' in b.exposition().decode()
