"""Week 1 model: KV cache == no cache, our model == the Hugging Face reference, bad input."""

from __future__ import annotations

import pytest
import torch

from week1_gpt_kvcache.generate import SamplingParams, generate
from week1_gpt_kvcache.hf_convert import from_hf_state_dict, to_hf_model, to_hf_state_dict
from week1_gpt_kvcache.kvcache import KVCache, kv_cache_bytes
from week1_gpt_kvcache.model import GPT, GPTConfig, make_config

ARCHS = ["gpt2", "llama"]
PROMPTS = [[1, 2, 3], [5, 6, 7, 8, 9, 10, 11, 12, 13], [4], [9, 9, 9, 9, 9], [30, 31]]


def tiny_model(arch: str, seed: int = 0, **kw) -> GPT:
    """Random weights, with norms and biases perturbed so that no mapping error can hide."""
    torch.manual_seed(seed)
    model = GPT(make_config(arch, "tiny", vocab_size=97, **kw)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_with_cache_equals_without(arch):
    model = tiny_model(arch)
    params = SamplingParams(max_tokens=64)
    cached = generate(model, PROMPTS, params, use_cache=True, return_logits=True)
    plain = generate(model, PROMPTS, params, use_cache=False, return_logits=True)
    assert all(len(t) == 64 for t in cached.tokens)
    assert torch.equal(torch.tensor(cached.tokens), torch.tensor(plain.tokens))
    for a, b in zip(cached.step_logits, plain.step_logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_batched_prompts_equal_one_at_a_time(arch):
    model = tiny_model(arch)
    params = SamplingParams(max_tokens=20)
    batched = generate(model, PROMPTS, params).tokens
    assert batched == [generate(model, [p], params).tokens[0] for p in PROMPTS]


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_prefill_with_cache_equals_full_forward(arch):
    model = tiny_model(arch)
    x = torch.randint(0, 97, (2, 40))
    full, _ = model(x)
    cache = model.new_cache(2)
    a, _ = model(x[:, :17], cache=cache)
    b, _ = model(x[:, 17:30], cache=cache)
    c, _ = model(x[:, 30:], cache=cache)
    torch.testing.assert_close(torch.cat([a, b, c], 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("tie", [True, False])
def test_logits_match_hugging_face_reference(arch, tie):
    model = tiny_model(arch, tie_weights=tie)
    hf = to_hf_model(
        model
    )  # GPT2LMHeadModel / LlamaForCausalLM from a config, our weights copied in
    assert type(hf).__name__ == {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM"}[arch]
    x = torch.randint(0, 97, (3, 60))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], hf(x).logits)


@pytest.mark.parametrize("arch", ARCHS)
def test_padded_batch_matches_hugging_face_with_attention_mask(arch):
    model = tiny_model(arch)
    hf = to_hf_model(model)
    ids = torch.randint(0, 97, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.bool)
    mask[1, :5] = False  # row 1 is left-padded by 5
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ours = model(ids, positions=positions, key_mask=mask)[0]
        ref = hf(ids, attention_mask=mask.long(), position_ids=positions).logits
    torch.testing.assert_close(ours[mask], ref[mask])


@pytest.mark.parametrize("arch", ARCHS)
def test_hf_state_dict_round_trip(arch):
    model = tiny_model(arch)
    back = from_hf_state_dict(model.cfg, to_hf_state_dict(model))
    for (k, v), (k2, v2) in zip(model.state_dict().items(), back.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k


def test_gqa_cache_is_smaller_and_formula_matches_tensors():
    cfg = make_config("llama", "tiny")  # 2 query heads, 1 K/V head
    cache = KVCache(cfg.n_layer, 3, cfg.n_kv_head, 50, cfg.head_dim)
    assert cache.allocated_bytes == kv_cache_bytes(
        cfg.n_layer, cfg.n_kv_head, cfg.head_dim, 50, 3, 4
    )
    assert (
        kv_cache_bytes(cfg.n_layer, cfg.n_head, cfg.head_dim, 50, 3, 4) == 2 * cache.allocated_bytes
    )
    model = GPT(cfg)
    model(torch.zeros(3, 10, dtype=torch.long), cache=(c := model.new_cache(3, 50)))
    assert c.length == 10 and c.used_bytes == c.allocated_bytes // 5


def test_cache_overflow_and_context_limit_are_clear_errors():
    model = tiny_model("llama")  # block_size 128
    cache = model.new_cache(1, 8)
    with pytest.raises(ValueError, match="KV cache is full"):
        model(torch.zeros(1, 9, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match="exceeds the model's context block_size=128"):
        model(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(
        ValueError, match="prompt of 120 tokens \\+ max_tokens=20 exceeds the context"
    ):
        generate(model, [[1] * 120], SamplingParams(max_tokens=20))
    with pytest.raises(ValueError, match="token id 500 is outside the vocabulary"):
        generate(model, [[1, 500]], SamplingParams())
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]], SamplingParams())


def test_config_validation():
    with pytest.raises(ValueError, match="must be a multiple of n_kv_head"):
        GPTConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ValueError, match="gpt2 uses multi-head attention"):
        GPTConfig(arch="gpt2", n_head=4, n_kv_head=2)
    with pytest.raises(ValueError, match="arch='bert'"):
        GPTConfig(arch="bert")
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)


def test_stop_token_ends_a_row_and_is_dropped():
    model = tiny_model("llama")
    free = generate(model, PROMPTS[:2], SamplingParams(max_tokens=30)).tokens
    stop = free[0][5]
    out = generate(model, PROMPTS[:2], SamplingParams(max_tokens=30, stop_token_ids=(stop,))).tokens
    assert out[0] == free[0][: free[0].index(stop)]
    assert stop not in out[1] and out[1] == free[1][: len(out[1])]
