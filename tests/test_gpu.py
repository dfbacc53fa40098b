"""CUDA paths: device choice, synchronized timing, and the KV cache on a GPU.

Skipped (with the reason) on machines without CUDA, which includes CI.
"""

from __future__ import annotations

import pytest
import torch

from common.device import pick_device, pick_dtype
from common.timing import Timer, benchmark
from week1_gpt_kvcache.export import to_hf_model
from week1_gpt_kvcache.generate import SamplingParams, generate
from week1_gpt_kvcache.model import GPT, make_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here"),
]


def test_auto_picks_cuda_and_bf16():
    assert pick_device("auto").type == "cuda"
    assert pick_device("cuda:0") == torch.device("cuda:0")
    assert pick_dtype(torch.device("cuda")) == torch.bfloat16


def test_timer_waits_for_the_gpu():
    """Unsynchronized, the clock would stop after *queuing* the matmuls (microseconds)."""
    a = torch.randn(4096, 4096, device="cuda")
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with Timer("cuda") as t:
        start.record()
        for _ in range(50):
            a = (a @ a).tanh()
        end.record()
    event_ms = start.elapsed_time(end)
    assert t.elapsed * 1e3 == pytest.approx(event_ms, rel=0.25, abs=1.0)
    stats = benchmark(lambda: a @ a, warmup=2, repeats=5, device="cuda")
    assert stats.median_ms > 0.05  # a 4096³ matmul cannot finish in 50 µs


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_cache_equals_no_cache_on_gpu(arch):
    torch.manual_seed(0)
    model = GPT(make_config(arch, "tiny", vocab_size=97)).cuda().eval()
    prompts = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11], [4]]
    p = SamplingParams(max_new_tokens=64)
    a = generate(model, prompts, p, use_cache=True, return_logits=True)
    b = generate(model, prompts, p, use_cache=False, return_logits=True)
    assert a.tokens == b.tokens
    for x, y in zip(a.step_logits, b.step_logits):
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)  # TF32 off by default: fp32 matmuls


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_hf_reference_on_gpu(arch):
    torch.manual_seed(0)
    model = GPT(make_config(arch, "tiny", vocab_size=97)).eval()
    hf = to_hf_model(model).cuda()
    model = model.cuda()
    x = torch.randint(0, 97, (2, 40), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf(x).logits, atol=1e-4, rtol=1e-4)


def test_engine_on_gpu_equals_hf_generate(tiny_gpt):
    """Our serving engine (week 2b) on CUDA: paged attention, batched steps, same tokens as HF."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
    from week2_serving.engine.sequence import SamplingParams as EngineParams

    d = tiny_gpt["hf_dir"]
    tok = AutoTokenizer.from_pretrained(d)
    hf = AutoModelForCausalLM.from_pretrained(d).cuda().eval()
    prompts = ["The list type", "x", "A dictionary is a mapping object that", "import"]
    max_tokens = [20, 7, 33, 12]
    eng = LLMEngine(EngineConfig(model=d, device="cuda", num_blocks=64, block_size=8), tok)
    params = [EngineParams(max_tokens=m, ignore_eos=True) for m in max_tokens]
    outs = eng.generate(prompts, params, use_tqdm=False)
    for p, m, out in zip(prompts, max_tokens, outs):
        ids = tok(p, return_tensors="pt").input_ids.cuda()
        with torch.no_grad():
            ref = hf.generate(ids, max_new_tokens=m, min_new_tokens=m, do_sample=False)
        assert out.token_ids == ref[0, ids.shape[1] :].tolist()
    seeded = EngineParams(max_tokens=8, temperature=1.0, seed=3, ignore_eos=True)
    first = eng.generate(["The"], seeded, use_tqdm=False)[0].token_ids
    assert eng.generate(["The"], seeded, use_tqdm=False)[0].token_ids == first
    assert eng.block_manager.num_used_blocks == 0
