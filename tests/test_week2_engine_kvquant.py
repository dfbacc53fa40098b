"""Week 2b: the quantized KV cache (int8 / fp8 e4m3, one scale per token per head).

Checked against the plain float32 cache: the quantizer's error bound, paged attention over a
quantized pool, the pool size a memory budget buys, and the whole engine's greedy tokens.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from week2_serving.engine import kv_quant
from week2_serving.engine.attention import attend, make_group
from week2_serving.engine.kv_cache import (
    PagedKVCache,
    QuantizedKVCache,
    kv_bytes_per_block,
    make_kv_cache,
)
from week2_serving.engine.kv_quant import FORMATS, check_kv_cache_dtype, dequantize, quantize
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.sequence import SamplingParams

QUANTIZED = list(FORMATS)  # int8, and fp8 where this torch has float8_e4m3fn
TINY_ROW = 1e-30  # rows below this may flush to zero (their scale underflows float32)


# --- the quantizer -------------------------------------------------------------------------------
# hostile rows: zeros, huge magnitudes, tiny ones, mixed signs; 8 numbers per row (head_dim)
magnitudes = st.sampled_from([0.0, 1e-38, 1e-20, 1e-3, 1.0, 7.5, 1e10, 1e30, 3e38])
numbers = st.builds(lambda m, f: m * f, magnitudes, st.floats(-1, 1, allow_nan=False))
rows = st.lists(st.lists(numbers, min_size=8, max_size=8), min_size=1, max_size=6)


@pytest.mark.parametrize("name", QUANTIZED)
@settings(max_examples=40, deadline=None)
@given(data=rows)
def test_quantize_error_is_within_the_stated_bound_per_token_head(name, data):
    fmt = FORMATS[name]
    x = torch.tensor(data + [[0.0] * 8], dtype=torch.float32)  # (R, D), a zero row always
    q, scale = quantize(x, fmt)
    assert q.dtype == fmt.storage and scale.shape == x.shape[:1]
    back = dequantize(q, scale, torch.float32)
    assert torch.isfinite(back).all() and torch.isfinite(scale).all()  # no NaN, no inf
    err = (back.double() - x.double()).abs().amax(-1)  # (R,) worst element per row
    amax = x.double().abs().amax(-1)
    bound = torch.where(amax >= TINY_ROW, amax * fmt.rel_error * (1 + 1e-5), amax)
    assert (err <= bound).all(), (err / amax.clamp_min(1e-300)).max()
    assert (back[-1] == 0).all()  # a zero row reads back as zeros


@pytest.mark.parametrize("name", QUANTIZED)
def test_quantize_keeps_the_compute_dtype_and_rows_in_bf16(name):
    x = torch.randn(5, 2, 16, dtype=torch.bfloat16)  # (N, Hkv, D)
    q, scale = quantize(x, FORMATS[name])
    assert scale.shape == (5, 2) and scale.dtype == torch.float32
    back = dequantize(q, scale, torch.bfloat16)
    assert back.dtype == torch.bfloat16
    rel = (back.float() - x.float()).abs().amax(-1) / x.float().abs().amax(-1)
    assert (rel <= FORMATS[name].rel_error + 2**-8).all()  # + bf16's own rounding


# --- the pool: attention over it, copy-on-write, its size ---------------------------------------
def fill(cache: PagedKVCache, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> None:
    for layer in range(cache.k.shape[0]):
        cache.write(layer, slots, k[layer], v[layer])


@pytest.mark.parametrize("name", QUANTIZED)
def test_paged_attention_over_a_quantized_pool_matches_float32(name):
    g = torch.Generator().manual_seed(0)
    L, H, Hkv, D, bs, nb = 2, 4, 2, 16, 4, 12
    tables, ctx, qlens = [[3, 7, 1], [10, 0], [5]], [11, 6, 3], [1, 6, 2]
    n = sum(len(t) for t in tables) * bs
    slots = torch.tensor([b * bs + o for t in tables for b in t for o in range(bs)])[:n]
    k, v = torch.randn(2, L, n, Hkv, D, generator=g)  # (L, n, Hkv, D) each
    plain = make_kv_cache("auto", L, nb, bs, Hkv, D)
    quant = make_kv_cache(name, L, nb, bs, Hkv, D)
    ref = make_kv_cache("auto", L, nb, bs, Hkv, D)  # float32, holding the dequantized values
    assert isinstance(quant, QuantizedKVCache) and not isinstance(plain, QuantizedKVCache)
    for c in (plain, quant):
        fill(c, k, v, slots)
    fill(ref, *[dequantize(*quantize(x, FORMATS[name]), torch.float32) for x in (k, v)], slots)
    starts = [0, 1, 7]
    group = make_group(tables, ctx, qlens, starts, bs)
    q = torch.randn(sum(qlens), H, D, generator=g)
    for layer in range(L):
        exact = attend(q, *plain.layer(layer), [group])
        got = attend(q, None, None, [group], lambda s, layer=layer: quant.gather(layer, s))
        same = attend(q, *ref.layer(layer), [group])
        torch.testing.assert_close(got, same, atol=1e-6, rtol=1e-6)  # the plumbing is exact
        tol = 8 * FORMATS[name].rel_error * 3  # values are ~N(0,1): max|x| within ~3
        torch.testing.assert_close(got, exact, atol=tol, rtol=0)
        by_gather = attend(q, None, None, [group], lambda s, layer=layer: plain.gather(layer, s))
        assert torch.equal(by_gather, exact)  # the plain pool's gather is the in-place read


@pytest.mark.parametrize("name", QUANTIZED)
def test_copy_on_write_copies_codes_and_scales(name):
    cache = make_kv_cache(name, 2, 4, 4, 2, 8)
    k, v = torch.randn(2, 2, 4, 2, 8) * torch.tensor([1.0, 100.0])[:, None, None, None, None]
    fill(cache, k, v, torch.arange(4, 8))  # block 1
    cache.copy_blocks([(1, 3)])
    for layer in range(2):
        src, dst = (
            cache.gather(layer, torch.arange(4, 8)),
            cache.gather(layer, torch.arange(12, 16)),
        )
        assert all(torch.equal(a, b) for a, b in zip(src, dst))
    assert torch.equal(cache.k_scale[:, 12:16], cache.k_scale[:, 4:8])
    assert torch.equal(cache.v_scale[:, 12:16], cache.v_scale[:, 4:8])
    assert (cache.v_scale[:, 12:16] > 0).all()


def test_bytes_per_block_follow_the_kv_dtype():
    L, Hkv, D, bs = 4, 2, 64, 16
    f32 = kv_bytes_per_block("auto", L, Hkv, D, bs, torch.float32)
    bf16 = kv_bytes_per_block("auto", L, Hkv, D, bs, torch.bfloat16)
    assert f32 == 2 * L * Hkv * D * 4 * bs and bf16 * 2 == f32
    for name in QUANTIZED:  # one byte a code + one float32 scale per token per head
        q8 = kv_bytes_per_block(name, L, Hkv, D, bs, torch.float32)
        assert q8 == 2 * L * Hkv * (D + 4) * bs
        assert q8 == kv_bytes_per_block(name, L, Hkv, D, bs, torch.bfloat16)  # not the model's
        assert f32 / q8 == pytest.approx(4 * D / (D + 4))  # 4x, less the scales' share
    cache = make_kv_cache("int8", L, 3, bs, Hkv, D)
    stored = sum(t.numel() * t.element_size() for t in (cache.k, cache.v, cache.k_scale))
    stored += cache.v_scale.numel() * cache.v_scale.element_size()
    assert stored == 3 * kv_bytes_per_block("int8", L, Hkv, D, bs, torch.float32)


# --- config and command line ---------------------------------------------------------------------
@pytest.mark.parametrize("bad", ["int4", "INT8", "", 8, None, True])
def test_engine_config_refuses_unknown_kv_dtypes(bad):
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        EngineConfig(kv_cache_dtype=bad)


def test_fp8_works_or_is_refused_naming_the_device(monkeypatch):
    if "fp8" in FORMATS:
        check_kv_cache_dtype("fp8", "cpu")  # supported here: no error
        monkeypatch.setattr(kv_quant, "quantize", lambda *a: (_ for _ in ()).throw(RuntimeError))
        with pytest.raises(ValueError, match="device cpu"):
            check_kv_cache_dtype("fp8", "cpu")
    monkeypatch.delitem(FORMATS, "fp8", raising=False)  # a torch without float8_e4m3fn
    with pytest.raises(ValueError, match="float8_e4m3fn"):
        check_kv_cache_dtype("fp8", "cpu")


def test_server_flag_parses_and_refuses(capsys):
    from week2_serving.engine.server import engine_config, parse_args

    assert parse_args([]).kv_cache_dtype == "auto"
    cfg = parse_args(["--kv-cache-dtype", "int8"])
    assert engine_config(cfg).kv_cache_dtype == "int8"
    with pytest.raises(SystemExit) as e:
        parse_args(["--kv-cache-dtype", "int4"])
    assert e.value.code == 2 and "--kv-cache-dtype" in capsys.readouterr().err


# --- the engine ----------------------------------------------------------------------------------
PROMPTS = [
    "A dictionary is a mapping object that",
    "for loops in Python iterate over the items of any sequence",
    "A dictionary is a mapping object that maps",  # shares full blocks with the first
    "Exceptions are raised when",
]
GREEDY = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
MIN_AGREEMENT = 0.8  # share of greedy tokens equal to the float32 cache's


def run(hf_dir, kv: str, **kw) -> tuple[list[list[int]], LLMEngine]:
    cfg = EngineConfig(
        model=hf_dir, device="cpu", dtype="float32", kv_cache_dtype=kv, block_size=4, **kw
    )
    eng = LLMEngine(cfg)
    return [o.token_ids for o in eng.generate(PROMPTS, GREEDY, use_tqdm=False)], eng


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    pairs = [(x, y) for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
    return sum(x == y for x, y in pairs) / len(pairs)


@pytest.fixture(scope="module")
def fp32_tokens(tiny_gpt):
    return run(tiny_gpt["hf_dir"], "auto", num_blocks=64)[0]


@pytest.mark.parametrize("name", QUANTIZED)
def test_engine_greedy_tokens_agree_with_the_float32_cache(tiny_gpt, fp32_tokens, name):
    tokens, eng = run(tiny_gpt["hf_dir"], name, num_blocks=64)
    assert isinstance(eng.runner.kv, QuantizedKVCache)
    share = agreement(tokens, fp32_tokens)
    assert share >= MIN_AGREEMENT, share


def test_int8_engine_under_memory_pressure_preempts_and_shares_prefixes(tiny_gpt, fp32_tokens):
    """Few blocks: requests are preempted and recomputed, shared prefixes hit the cache; the
    block manager's invariants hold after every step, and the tokens still agree."""
    hf_dir = tiny_gpt["hf_dir"]
    cfg = EngineConfig(
        hf_dir, 4, num_blocks=14, kv_cache_dtype="int8", device="cpu", dtype="float32"
    )
    eng = LLMEngine(cfg)
    seqs = [eng.add_request(PROMPTS[0], GREEDY)]
    eng.step()  # its prompt's full blocks are now in the prefix cache
    seqs += [eng.add_request(p, GREEDY) for p in PROMPTS[1:]]
    while eng.has_unfinished():
        eng.step()
        eng.block_manager.check_invariants(eng.scheduler.running)
    assert eng.scheduler.num_preemptions > 0 and eng.block_manager.prefix_hits > 0
    assert agreement([s.output_token_ids for s in seqs], fp32_tokens) >= MIN_AGREEMENT


def test_the_pool_from_a_memory_budget_grows_with_int8(tiny_gpt):
    gib = 2**-10  # 1 MiB
    blocks = {}
    for kv in ("auto", "int8"):
        cfg = EngineConfig(
            model=tiny_gpt["hf_dir"], kv_cache_memory=gib, kv_cache_dtype=kv, dtype="float32"
        )
        eng = LLMEngine(cfg)
        c = eng.runner.cfg
        per = kv_bytes_per_block(kv, c.num_layers, c.num_kv_heads, c.head_dim, 16, torch.float32)
        blocks[kv] = eng.block_manager.num_blocks
        assert blocks[kv] == math.floor(2**20 / per)
    D = eng.runner.cfg.head_dim
    assert blocks["int8"] / blocks["auto"] == pytest.approx(4 * D / (D + 4), rel=0.02)


def test_kv_bench_tiny_run_confirms_its_block_math(tiny_gpt, tmp_path, monkeypatch):
    from week2_serving.engine import kv_bench

    monkeypatch.setenv("IE_RUNS_DIR", str(tmp_path))
    val = tiny_gpt["runs"] / "week1" / "data-bpe" / "val.bin"
    cfg = kv_bench.KVBenchConfig(
        model=str(tiny_gpt["hf_dir"]),
        val_data=str(val),
        caches=["fp32", "int8"],
        kv_memory_mib=1 / 32,
        context_len=24,
        prompt_len=16,
        block_size=8,
        repeats=1,
        ppl_windows=1,
        ppl_window_len=32,
        agree_prompts=2,
        agree_tokens=4,
    )
    res = kv_bench.run(cfg)
    cap = res["capacity"]
    for c in ("fp32", "int8"):  # the block math is what the engine does
        assert cap[c]["fits_at_max"] and cap[c]["preempts_at_max_plus_1"]
    assert cap["int8"]["max_sequences"] >= 3 * cap["fp32"]["max_sequences"]
    assert res["throughput"]["fp32"]["preemptions"][0] > 0
    assert res["throughput"]["int8"]["preemptions"][0] == 0
    q = res["quality"]
    assert q["fp32"]["top1_agreement"] == 1.0 and q["int8"]["top1_agreement"] >= MIN_AGREEMENT
    assert q["int8"]["perplexity"] == pytest.approx(q["fp32"]["perplexity"], rel=0.05)
    with pytest.raises(ValueError, match="caches"):
        kv_bench.KVBenchConfig(caches=["int8"])
