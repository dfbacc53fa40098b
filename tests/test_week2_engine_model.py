"""Week 2b: paged attention, the runner and the whole engine against their references."""

from __future__ import annotations

import shutil

import pytest
import torch
import torch.nn.functional as F

from week1_gpt_kvcache.hf_convert import to_hf_model
from week1_gpt_kvcache.model import GPT, make_config
from week2_serving.engine.attention import make_group, paged_attention
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.sequence import SamplingParams


# --- paged attention == dense attention ---------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_paged_attention_equals_dense_on_random_block_layouts(seed):
    g = torch.Generator().manual_seed(seed)
    H, Hkv, D, bs, num_blocks = 4, 2, 8, 4, 40
    ctx_lens = torch.randint(1, 30, (5,), generator=g).tolist()
    q_lens = [int(torch.randint(1, c + 1, (1,), generator=g)) for c in ctx_lens]  # chunk at end
    perm = torch.randperm(num_blocks, generator=g).tolist()  # scattered, out-of-order blocks
    tables, k_pool, v_pool = (
        [],
        torch.zeros(num_blocks * bs, Hkv, D),
        torch.zeros(num_blocks * bs, Hkv, D),
    )
    ks, vs = [], []
    for c in ctx_lens:
        n = -(-c // bs)
        table, perm = perm[:n], perm[n:]
        tables.append(table)
        k, v = torch.randn(c, Hkv, D, generator=g), torch.randn(c, Hkv, D, generator=g)
        for p in range(c):
            slot = table[p // bs] * bs + p % bs
            k_pool[slot], v_pool[slot] = k[p], v[p]
        ks.append(k)
        vs.append(v)
    qs = [torch.randn(t, H, D, generator=g) for t in q_lens]
    starts = [sum(q_lens[:i]) for i in range(len(q_lens))]
    group = make_group(tables, ctx_lens, q_lens, starts, bs)
    T = max(q_lens)
    q = torch.zeros(len(qs), T, H, D)
    for i, qi in enumerate(qs):
        q[i, : len(qi)] = qi
    paged = paged_attention(q, k_pool, v_pool, group.slots, group.mask)  # (B, T, H, D)
    for i, (qi, k, v) in enumerate(zip(qs, ks, vs)):
        t, c = len(qi), len(k)
        # dense reference: contiguous K/V, queries are the last t positions of c
        causal = torch.arange(c)[None, :] <= torch.arange(c - t, c)[:, None]  # (t, c)
        kk = k.transpose(0, 1).repeat_interleave(H // Hkv, 0)  # (H, c, D)
        vv = v.transpose(0, 1).repeat_interleave(H // Hkv, 0)
        dense = F.scaled_dot_product_attention(qi.transpose(0, 1), kk, vv, attn_mask=causal)
        torch.testing.assert_close(paged[i, :t], dense.transpose(0, 1), atol=1e-5, rtol=1e-5)


# --- the engine vs Hugging Face generate() --------------------------------------------------------
PROMPTS = [
    "The list type",
    "A dictionary is a mapping object that",
    "x",
    "for loops in Python iterate over the items of any sequence, in the order that they appear",
    "The list type supports",  # shares a prefix with the first
    "Exceptions are raised when",
    "A dictionary is a mapping object that maps",  # shares a prefix with the second
    "import",
    "The with statement is used to wrap the execution of a block with methods defined by",
]
MAX_TOKENS = [5, 40, 17, 30, 3, 25, 33, 8, 12]


@pytest.fixture(scope="module")
def hf_reference(tiny_gpt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny_gpt["hf_dir"]
    tok = AutoTokenizer.from_pretrained(d)
    hf = AutoModelForCausalLM.from_pretrained(d).eval()
    refs = []
    for p, m in zip(PROMPTS, MAX_TOKENS):
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=m, min_new_tokens=m, do_sample=False)
        refs.append(out[0, ids.shape[1] :].tolist())
    return tok, refs


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("plain", dict(enable_prefix_caching=False)),
        ("prefix-caching", dict(enable_prefix_caching=True, max_num_seqs=3, block_size=4)),
        ("preemption", dict(num_blocks=10, block_size=8, max_num_batched_tokens=16)),
        ("static", dict(scheduling="static", max_num_seqs=4)),
        ("static-padded", dict(scheduling="static-padded", max_num_seqs=4)),
        # padding rows are dropped, never a real request, when blocks run short
        ("static-padded-tight", dict(scheduling="static-padded", num_blocks=10, block_size=8)),
        ("sequential", dict(scheduling="sequential")),
    ],
)
def test_engine_greedy_equals_hf_generate(tiny_gpt, hf_reference, name, overrides):
    tok, refs = hf_reference
    cfg = EngineConfig(
        model=tiny_gpt["hf_dir"], **{"num_blocks": 512, "dtype": "float32", **overrides}
    )
    eng = LLMEngine(cfg, tokenizer=tok)
    params = [SamplingParams(max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
    outs = eng.generate(PROMPTS, params, use_tqdm=False)
    for out, ref, prompt in zip(outs, refs, PROMPTS):
        assert out.token_ids == ref, f"{name}: {prompt!r}"
    stats = eng.stats()
    assert stats["kv_blocks_used"] == 0 and not eng.has_unfinished()
    if name == "prefix-caching":
        assert stats["prefix_cache_hits_tokens"] > 0
    if name == "preemption":
        assert stats["preemptions"] > 0


def test_gpt2_preset_runs_paged_too(tiny_gpt, tmp_path):
    """The runner also serves the GPT-2 flavour (learned positions, no RoPE)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = GPT(make_config("gpt2", "tiny", vocab_size=512)).eval()
    folder = tmp_path / "gpt2"
    to_hf_model(model).save_pretrained(folder)
    for f in tiny_gpt["hf_dir"].glob("tokenizer*"):
        shutil.copy(f, folder / f.name)
    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    eng = LLMEngine(EngineConfig(model=folder, block_size=4, dtype="float32"), tokenizer=tok)
    prompts = PROMPTS[:4]
    outs = eng.generate(prompts, SamplingParams(max_tokens=12, ignore_eos=True), use_tqdm=False)
    for p, out in zip(prompts, outs):
        ids = tok(p, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = hf.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False)
        assert out.token_ids == ref[0, ids.shape[1] :].tolist()


def test_prompt_too_long_and_bad_token_ids_are_refused(tiny_gpt, hf_reference):
    tok, _ = hf_reference
    eng = LLMEngine(
        EngineConfig(model=tiny_gpt["hf_dir"], num_blocks=256, dtype="float32"), tokenizer=tok
    )
    with pytest.raises(ValueError, match="maximum context length is 128"):
        eng.add_request(list(range(120)), SamplingParams(max_tokens=10))
    with pytest.raises(ValueError, match="outside the vocabulary"):
        eng.add_request([1, 2, 9999])
    assert not eng.has_unfinished()


def test_abort_frees_blocks_at_once(tiny_gpt, hf_reference):
    tok, _ = hf_reference
    eng = LLMEngine(
        EngineConfig(model=tiny_gpt["hf_dir"], num_blocks=256, dtype="float32"), tokenizer=tok
    )
    a = eng.add_request("The list type", SamplingParams(max_tokens=50, ignore_eos=True))
    eng.add_request("import", SamplingParams(max_tokens=50, ignore_eos=True))
    for _ in range(3):
        eng.step()
    assert eng.block_manager.num_used_blocks > 0
    assert eng.abort(a.request_id) and a.finish_reason == "abort"
    while eng.has_unfinished():
        eng.step()
    assert eng.block_manager.num_used_blocks == 0


# --- sampling ------------------------------------------------------------------------------------
def test_same_seed_same_tokens_whatever_the_batch(tiny_gpt, hf_reference):
    tok, refs = hf_reference
    eng = LLMEngine(
        EngineConfig(model=tiny_gpt["hf_dir"], num_blocks=256, dtype="float32"), tokenizer=tok
    )
    sp = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=123, ignore_eos=True)
    alone = eng.generate(["The list type"], sp, use_tqdm=False)[0].token_ids
    crowd = eng.generate(["import", "The list type", "x"], sp, use_tqdm=False)[1].token_ids
    assert alone == crowd
    other = SamplingParams(max_tokens=20, temperature=1.0, seed=7, ignore_eos=True)
    assert eng.generate(["The list type"], other, use_tqdm=False)[0].token_ids != alone
    top1 = SamplingParams(max_tokens=5, temperature=1.0, top_k=1, seed=1, ignore_eos=True)
    assert eng.generate([PROMPTS[0]], top1, use_tqdm=False)[0].token_ids == refs[0]
