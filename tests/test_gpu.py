"""CUDA paths: device choice, synchronized timing, the KV cache and our engine on a GPU (fp32
and bf16), and one week 3 QLoRA run on the GPU.

Skipped (with the reason) on machines without CUDA, which includes CI.
"""

from __future__ import annotations

import pytest
import torch

from common.device import pick_device, pick_dtype
from common.timing import Timer, benchmark
from week1_gpt_kvcache.generate import SamplingParams, generate
from week1_gpt_kvcache.hf_convert import to_hf_model
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
    p = SamplingParams(max_tokens=64)
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
    cfg = EngineConfig(model=d, device="cuda", dtype="float32", num_blocks=64, block_size=8)
    eng = LLMEngine(cfg, tok)
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


def test_engine_bf16_on_gpu_follows_hf_bf16(tiny_gpt):
    """`--device cuda --dtype bfloat16`: the weights and the KV cache in bf16 on the GPU; each
    greedy token is HF's bf16 argmax or within bf16 noise of it (HF scores the engine's text)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from week2_serving.engine.llm_engine import LLMEngine
    from week2_serving.engine.sequence import SamplingParams as EngineParams
    from week2_serving.engine.server import engine_config, parse_args

    d = tiny_gpt["hf_dir"]
    tok = AutoTokenizer.from_pretrained(d)
    a = parse_args(["--model", str(d), "--device", "cuda", "--dtype", "bfloat16"])
    cfg = engine_config(a)
    cfg.num_blocks = 64
    eng = LLMEngine(cfg, tok)
    assert eng.runner.kv.k.dtype == torch.bfloat16 and eng.runner.kv.k.is_cuda
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).cuda().eval()
    prompts = ["The list type", "x", "A dictionary is a mapping object that"]
    outs = eng.generate(prompts, EngineParams(max_tokens=16, ignore_eos=True), use_tqdm=False)
    same = total = 0
    for p, out in zip(prompts, outs):
        ids = tok(p).input_ids
        seq = torch.tensor([ids + out.token_ids], device="cuda")
        with torch.no_grad():
            logits = hf(seq).logits[0, len(ids) - 1 : -1].float()  # (new, V)
        picked = logits.gather(1, torch.tensor(out.token_ids, device="cuda")[:, None])[:, 0]
        best = logits.max(dim=-1).values
        assert (best - picked <= 0.02 * (logits.max() - logits.min())).all()
        same += int((picked == best).sum())
        total += len(out.token_ids)
    assert same / total >= 0.9


def test_week3_qlora_step_on_gpu(tiny_gpt, runs_dir):
    """QLoRA on CUDA: the tiny base in 4-bit NF4 on the GPU, bf16 compute, a few steps train
    every LoRA matrix and leave the base untouched."""
    from week3_finetune_lora import data, sft

    data.main(data.make_config("tiny"))
    cfg = sft.make_config(
        "tiny",
        task="sort",
        quant="nf4",
        model=str(tiny_gpt["hf_dir"]),
        device="cuda",
        dtype="bfloat16",
        max_steps=4,
        eval_base=False,
    )
    r = sft.main(cfg)
    assert r["device"].startswith("cuda") and r["dtype"] == "bfloat16"
    assert r["trainable_tensors_changed"] == r["trainable_tensors"] > 0
    assert r["frozen_tensors_changed"] == []
