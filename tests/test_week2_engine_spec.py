"""Speculative decoding in the engine: greedy with speculation gives exactly greedy's tokens.

Both proposers (n-gram lookup; a draft model: the target itself for full acceptance, a noisy
copy of it for partial acceptance) x k in {1, 3, 5}, on one mixed batch (different prompt
lengths, a shared prefix for the prefix cache, a max_tokens cut mid-guess) in a KV pool small
enough to force preemption; the block manager's invariants are checked after every step.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from week1_gpt_kvcache.hf_convert import from_hf_folder, to_hf_model
from week1_gpt_kvcache.model import GPT, make_config
from week2_serving.engine import EngineConfig, LLMEngine, SamplingParams
from week2_serving.engine.spec.config import SpecConfig
from week2_serving.harness import server_metrics

SHARED = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20]  # > one block: a prefix-cache hit
PROMPTS = [
    SHARED + [21, 22],
    SHARED + [30],
    [5, 6, 7, 5, 6, 7, 5, 6],  # repetitive: the n-gram lookup has something to copy
    [40],
    list(range(50, 75)),
]
MAX_TOKENS = [24, 20, 24, 7, 16]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A tiny model runs fastest on one thread (and does not fight the other tests for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok(tiny_gpt: dict):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_gpt["hf_dir"]))


def run(hf_dir, tok, spec: SpecConfig | None, num_blocks: int = 14) -> tuple[list, LLMEngine]:
    """Every prompt to the end, greedy, checking the block manager after each step."""
    cfg = EngineConfig(
        model=hf_dir, num_blocks=num_blocks, block_size=4, max_num_batched_tokens=64,
        speculative=spec, device="cpu", dtype="float32",
    )  # fmt: skip
    engine = LLMEngine(cfg, tok)
    seqs = [
        engine.add_request(p, SamplingParams(max_tokens=m, ignore_eos=True))
        for p, m in zip(PROMPTS, MAX_TOKENS)
    ]
    while engine.has_unfinished():
        engine.step()
        engine.block_manager.check_invariants(engine.scheduler.running)
        assert all(not s.spec_tokens for s in seqs)  # guesses never outlive their step
    assert engine.block_manager.num_used_blocks == 0
    return [s.output_token_ids for s in seqs], engine


@pytest.fixture(scope="module")
def target(tiny_gpt: dict, tmp_path_factory) -> Path:
    """A random-weight tiny Llama (seeded) in an HF folder with the tiny export's tokenizer.

    Its weights are scaled up so its greedy choices vary with the context (the 30-step tiny
    model repeats one token, which would make "same tokens" an easy test) and are decisive
    (no near-ties for float rounding to flip)."""
    torch.manual_seed(0)
    model = GPT(make_config("llama", "tiny", vocab_size=512, dropout=0.0))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(6.0)
    folder = tmp_path_factory.mktemp("spec") / "target"
    shutil.copytree(tiny_gpt["hf_dir"], folder)
    to_hf_model(model, 0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def reference(target, tok) -> list:
    outs, engine = run(target, tok, None)
    assert engine.scheduler.num_preemptions > 0  # the pool is small enough to preempt
    assert [len(o) for o in outs] == MAX_TOKENS
    assert len({t for o in outs for t in o}) > 10  # varied tokens: a test that can fail
    return outs


def noisy_copy(hf_dir, scale: float = 0.1) -> Path:
    """The target with its weights jittered (seeded), saved beside it: a draft that is often,
    not always, right."""
    folder = Path(hf_dir).parent / f"noisy-{scale}"
    if folder.exists():
        return folder
    model = from_hf_folder(hf_dir, "cpu")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * scale * p.std().nan_to_num(0.0))
    shutil.copytree(hf_dir, folder)
    to_hf_model(model, 0).save_pretrained(folder)
    return folder


CASES = [(m, k) for m in ("ngram", "draft-noisy") for k in (1, 3, 5)] + [("draft-self", 3)]


@pytest.mark.parametrize(("method", "k"), CASES)
def test_greedy_speculation_is_exact(target, tok, reference, method, k):
    hf_dir = target
    if method == "ngram":
        spec = SpecConfig("ngram", k, ngram_min=1, ngram_max=3)
    else:
        draft = hf_dir if method == "draft-self" else noisy_copy(hf_dir)
        spec = SpecConfig("draft", k, draft_model=draft)
    outs, engine = run(hf_dir, tok, spec)
    assert outs == reference
    assert engine.scheduler.num_preemptions > 0
    s = engine.spec.metrics.summary()
    assert s["drafts"] > 0 and s["draft_tokens"] >= s["drafts"]
    if method == "draft-self":  # the target guessing for itself: every guess right
        assert s["accepted"] == s["draft_tokens"]
    if method == "draft-noisy":
        assert 0 < s["accepted"] < s["draft_tokens"]
    # the tokens emitted = the rounds' accepted guesses + one each, plus plain steps' tokens
    assert engine.num_generated == sum(MAX_TOKENS)


def test_metrics_exposed_under_vllm_names(target, tok):
    _, engine = run(target, tok, SpecConfig("ngram", 3), num_blocks=64)
    text = engine.metrics.exposition().decode()
    s = engine.spec.metrics.summary()
    for name, value in [
        ("vllm:spec_decode_num_drafts_total", s["drafts"]),
        ("vllm:spec_decode_num_draft_tokens_total", s["draft_tokens"]),
        ("vllm:spec_decode_num_accepted_tokens_total", s["accepted"]),
    ]:
        line = next(x for x in text.splitlines() if x.startswith(name + "{"))
        assert float(line.rsplit(" ", 1)[1]) == value
    per_pos = [x for x in text.splitlines() if "accepted_tokens_per_pos_total{" in x]
    assert len(per_pos) == 3 and all('position="' in x for x in per_pos)
    assert sum(float(x.rsplit(" ", 1)[1]) for x in per_pos) == s["accepted"]
    assert s["mean_acceptance_length"] == 1 + s["accepted"] / s["drafts"]
    counters = server_metrics.parse_counters(text)  # what the harness records per cell
    assert counters["spec_decode_num_accepted_tokens"] == s["accepted"]
    before = {"available": True, **dict.fromkeys(counters, 0.0)}
    got = server_metrics.cell_counters(before, {"available": True, **counters})
    assert got["spec_decode_mean_acceptance_length"] == s["mean_acceptance_length"]


def test_served_with_speculation_streams_the_same_text(target, tok):
    """Over HTTP: several tokens per step reach the stream and the plain response alike."""
    from fastapi.testclient import TestClient

    from week2_serving.engine.api import create_app

    texts = []
    for spec in (None, SpecConfig("ngram", 3)):
        engine = LLMEngine(EngineConfig(model=target, num_blocks=64, speculative=spec), tok)
        body = {"model": "t", "prompt": [5, 6, 7, 5, 6, 7, 5], "max_tokens": 12, "temperature": 0}
        with TestClient(create_app(engine, "t")) as c:
            plain = c.post("/v1/completions", json=body).json()["choices"][0]["text"]
            r = c.post("/v1/completions", json={**body, "stream": True})
            chunks = [x[6:] for x in r.text.splitlines() if x.startswith("data: {")]
            streamed = "".join(json.loads(x)["choices"][0]["text"] for x in chunks)
            metrics = c.get("/metrics").text
        assert streamed == plain
        texts.append(plain)
        assert ("vllm:spec_decode_num_drafts_total" in metrics) == (spec is not None)
    assert texts[0] == texts[1]


@pytest.mark.parametrize("method", ["ngram", "draft"])
def test_sampled_speculation_is_seeded_and_keeps_the_books(target, tok, method):
    """Temperature, top-k and top-p through both proposers: a seed gives the same tokens twice,
    every request gets its max_tokens, and the pool is whole after every step."""
    spec = SpecConfig(method, 3, draft_model=noisy_copy(target) if method == "draft" else None)
    params = SamplingParams(max_tokens=12, temperature=0.8, top_k=50, top_p=0.9, ignore_eos=True)
    runs = []
    for _ in range(2):
        engine = LLMEngine(
            EngineConfig(model=target, num_blocks=14, block_size=4, speculative=spec), tok
        )
        seqs = [
            engine.add_request(p, SamplingParams(**{**vars(params), "seed": i}))
            for i, p in enumerate(PROMPTS)
        ]
        while engine.has_unfinished():
            engine.step()
            engine.block_manager.check_invariants(engine.scheduler.running)
        runs.append([s.output_token_ids for s in seqs])
        assert [len(o) for o in runs[-1]] == [12] * len(PROMPTS)
        assert engine.spec.metrics.summary()["drafts"] > 0
    assert runs[0] == runs[1]
