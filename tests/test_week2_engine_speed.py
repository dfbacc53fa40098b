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
SDPA = dict(paged_kernel=False, prepacked_linears=False, fused_norms=False)  # CPU levers off
OFF = dict(fast_prepare=False, batched_sampling=False, **SDPA)


def engine(tiny_gpt, **overrides) -> LLMEngine:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt["hf_dir"])
    return LLMEngine(EngineConfig(model=tiny_gpt["hf_dir"], **overrides), tokenizer=tok)


def same_inputs(a, b, groups: bool = True) -> None:
    for name in ("ids", "positions", "slot_mapping", "sample_rows", "tables", "seq_of_row"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    if not groups:  # the paged op's steps: the planner builds no SDPA groups
        assert a.groups == []
        return
    assert len(a.groups) == len(b.groups)
    for ga, gb in zip(a.groups, b.groups):
        assert (ga.B, ga.T, ga.padded) == (gb.B, gb.T, gb.padded)
        for name in ("rows", "slots", "mask"):
            assert torch.equal(getattr(ga, name), getattr(gb, name)), name


@pytest.mark.parametrize("paged", [False, None])  # SDPA groups; auto: the op where it builds
def test_fast_prepare_builds_the_reference_inputs_at_every_step(tiny_gpt, paged):
    """Chunked prefills, decodes, prefix-cache hits and a preemption: every step's inputs from
    the tensor-op planner equal the per-token loop's, field by field."""
    eng = engine(tiny_gpt, **TIGHT, paged_kernel=paged)
    runner, steps = eng.runner, []
    fast = runner.prepare

    def both(batch):
        ref, out = runner.prepare_reference(batch), fast(batch)
        same_inputs(out, ref, groups=not runner.paged_kernel)
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


# --- the in-place paged attention op (paged_cpu.py) -------------------------------------------
@pytest.fixture(scope="module")
def paged_op():
    """The op, built (about a minute the first time on a machine, cached after). Skipped only
    where there is no C++ compiler at all; with one, the build must succeed."""
    import os
    import shutil

    from week2_serving.engine import paged_cpu

    if not shutil.which(os.environ.get("CXX", "c++")):
        pytest.skip("no C++ compiler on this machine: the op cannot be built")
    assert paged_cpu.unavailable_reason() is None


needs_op = pytest.mark.usefixtures("paged_op")


def random_step(dtype, H=4, Hkv=2, D=64, bs=4, seed=0):
    """A pool with shuffled blocks and a step mixing decodes, prefill chunks after a cached
    prefix and a speculating sequence's 3 rows: (q, k, v, decode, prefill, tables, seq_of_row,
    positions)."""
    import random

    rng = random.Random(seed)
    torch.manual_seed(seed)
    nb = 64
    k, v = torch.randn(nb * bs, Hkv, D, dtype=dtype), torch.randn(nb * bs, Hkv, D, dtype=dtype)
    free = list(range(nb))
    rng.shuffle(free)
    decode, prefill, tables, seq_of_row, positions, row = [], [], [], [], [], 0
    for b, (q_len, ctx, spec) in enumerate(
        [(1, 37, 0), (1, 5, 0), (7, 20, 0), (1, 100, 0), (3, 3, 0), (3, 30, 1), (1, 1, 0)]
    ):
        table = [free.pop() for _ in range(-(-ctx // bs))]
        tables.append(table)
        (decode if q_len == 1 or spec else prefill).append((table, ctx, q_len, row))
        seq_of_row += [b] * q_len
        positions += range(ctx - q_len, ctx)
        row += q_len
    q = torch.randn(row, H, D, dtype=dtype)
    M = max(map(len, tables))
    bt = torch.tensor([t + [0] * (M - len(t)) for t in tables])
    return q, k, v, decode, prefill, bt, torch.tensor(seq_of_row), torch.tensor(positions), bs


@needs_op
@pytest.mark.parametrize(
    "dtype,H,Hkv,D",
    [
        (torch.float32, 4, 2, 64),  # GQA
        (torch.float32, 3, 3, 20),  # MHA, a head dim that is no multiple of the op's 16 lanes
        (torch.bfloat16, 8, 2, 32),
        (torch.float16, 4, 1, 64),  # MQA
    ],
)
def test_paged_op_equals_sdpa_over_gathered_keys(dtype, H, Hkv, D):
    """Every row of a mixed step (decodes of many context lengths, prefill chunks, a
    speculating sequence): the op's attention equals the SDPA groups' (attention.attend)."""
    from week2_serving.engine.attention import attend, plan_groups
    from week2_serving.engine.paged_cpu import paged_attention

    q, k, v, decode, prefill, bt, sor, pos, bs = random_step(dtype, H, Hkv, D)
    ref = attend(q, k, v, plan_groups(decode, prefill, bs, "cpu", dtype))
    out = paged_attention(q, k, v, bt, sor, pos, bs)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert out.dtype == dtype and out.shape == q.shape
    assert torch.allclose(out.float(), ref.float(), atol=tol, rtol=tol)


@needs_op
def test_paged_op_refuses_indices_outside_the_pool_instead_of_reading_them():
    from week2_serving.engine.paged_cpu import paged_attention

    q, k, v, _, _, bt, sor, pos, bs = random_step(torch.float32)
    bad = bt.clone()
    bad[0, 0] = 10_000  # no such block
    with pytest.raises(RuntimeError, match="outside the pool"):
        paged_attention(q, k, v, bad, sor, pos, bs)
    far = pos.clone()
    far[0] = bt.shape[1] * bs  # past the end of its table
    with pytest.raises(RuntimeError, match="outside the tables"):
        paged_attention(q, k, v, bt, sor, far, bs)


@needs_op
@pytest.mark.parametrize("overrides", [TIGHT, dict(num_blocks=256, max_num_seqs=8)])
@pytest.mark.parametrize("fast", [True, False])
def test_paged_op_keeps_the_tokens_of_sdpa_attention(tiny_gpt, overrides, fast):
    """Chunked prefills, prefix hits and preemption (TIGHT), greedy and seeded rows, on the
    fast and the reference input path: the tokens of the SDPA path."""
    params = [SamplingParams(max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
    params[2] = SamplingParams(max_tokens=17, temperature=0.9, seed=7, ignore_eos=True)
    ref = engine(tiny_gpt, **overrides, **SDPA).generate(PROMPTS, params, use_tqdm=False)
    eng = engine(
        tiny_gpt, **overrides, paged_kernel=True, prepacked_linears=False, fast_prepare=fast
    )
    assert eng.runner.paged_kernel and not eng.runner.packed
    out = eng.generate(PROMPTS, params, use_tqdm=False)
    assert [o.token_ids for o in out] == [r.token_ids for r in ref]
    if fast:  # the SDPA groups are not built when the op does the attention
        assert eng.runner.planner.build_groups is False


def test_paged_op_that_cannot_be_built_is_an_error_at_start(tiny_gpt, monkeypatch):
    """No compiler on this machine: asking for the op fails at start and says why."""
    from week2_serving.engine import paged_cpu

    monkeypatch.setattr(paged_cpu, "unavailable_reason", lambda: "CalledProcessError: no c++")
    with pytest.raises(RuntimeError, match="could not be built.*no c\\+\\+"):
        engine(tiny_gpt, paged_kernel=True)


@needs_op
def test_by_default_the_cpu_engine_uses_the_op_and_packed_linears(tiny_gpt):
    eng = engine(tiny_gpt)
    assert eng.runner.paged_kernel
    assert bool(eng.runner.packed) == torch.backends.mkldnn.is_available()
    off = engine(tiny_gpt, **SDPA)  # each lever can be turned off
    assert not off.runner.paged_kernel and off.runner.packed == {}


def test_by_default_an_op_that_cannot_be_built_falls_back_to_sdpa(tiny_gpt, monkeypatch, caplog):
    """Auto (the default) on a machine without a compiler: the SDPA groups, the reason logged,
    and the tokens of the SDPA path."""
    from week2_serving.engine import paged_cpu

    monkeypatch.setattr(paged_cpu, "unavailable_reason", lambda: "CalledProcessError: no c++")
    params = [SamplingParams(max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
    with caplog.at_level("WARNING", logger="week2.engine"):
        eng = engine(tiny_gpt, **TIGHT)
    assert not eng.runner.paged_kernel
    assert "could not be built (CalledProcessError: no c++)" in caplog.text
    ref = engine(tiny_gpt, **TIGHT, **SDPA).generate(PROMPTS, params, use_tqdm=False)
    out = eng.generate(PROMPTS, params, use_tqdm=False)
    assert [o.token_ids for o in out] == [r.token_ids for r in ref]
    assert eng.runner.planner.build_groups is True  # the SDPA groups were built


def test_by_default_a_quantized_kv_cache_takes_the_sdpa_path_without_asking(tiny_gpt, monkeypatch):
    from week2_serving.engine import paged_cpu

    monkeypatch.setattr(paged_cpu, "unavailable_reason", lambda: pytest.fail("op was built"))
    eng = engine(tiny_gpt, kv_cache_dtype="int8", fused_norms=False)  # (those would build it)
    assert not eng.runner.paged_kernel


def test_paged_op_is_refused_where_it_does_not_apply(tiny_gpt):
    for bad in (dict(kv_cache_dtype="int8"), dict(device="cuda")):
        if bad.get("device") == "cuda" and not torch.cuda.is_available():
            continue  # the device itself would be refused first
        with pytest.raises(ValueError, match="paged_kernel"):
            EngineConfig(model=tiny_gpt["hf_dir"], paged_kernel=True, **bad)


def test_the_op_build_is_named_for_this_source_torch_and_cpu(monkeypatch):
    """A build compiled for one CPU (-march=native) is never loaded on another."""
    from week2_serving.engine import paged_cpu

    names = []
    monkeypatch.setattr(
        "torch.utils.cpp_extension.load", lambda name, **kw: names.append(name) or name
    )
    for flags in ("flags: avx2", "flags: avx2 avx512f"):
        paged_cpu.load.cache_clear()
        monkeypatch.setattr(paged_cpu, "cpu_features", lambda f=flags: f)
        paged_cpu.load()
    paged_cpu.load.cache_clear()
    assert len(set(names)) == 2 and all(n.startswith("ie_paged_attention_") for n in names)


# --- fused RMSNorm (paged_cpu.rms_norm / add_rms_norm) ----------------------------------------
@needs_op
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_norms_equal_the_plain_ops(dtype):
    """The fused ops round as the plain path does (norm in float32, rounded, then scaled):
    bit-equal in the 16-bit types, within float32 rounding in float32; the add is exact."""
    from week2_serving.engine import paged_cpu
    from week2_serving.engine.models.layers import Norm, rms_norm

    g = torch.Generator().manual_seed(0)
    x, d = (torch.randn(7, 96, generator=g).to(dtype) * 3 for _ in range(2))
    w = Norm(torch.randn(96, generator=g).to(dtype), None)
    ref = rms_norm(x, w, 1e-5)
    s, y = paged_cpu.add_rms_norm(x, d, w.weight, 1e-5)
    assert torch.equal(s, x + d)
    got = [paged_cpu.rms_norm(x, w.weight, 1e-5), y]
    for out, want in zip(got, [ref, rms_norm(x + d, w, 1e-5)]):
        if dtype == torch.float32:
            torch.testing.assert_close(out, want, atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(out, want)


@needs_op
def test_fused_norms_are_on_by_default_for_rmsnorm_and_keep_the_tokens(tiny_gpt):
    params = [SamplingParams(max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
    ref = engine(tiny_gpt, **TIGHT, **SDPA)
    eng = engine(tiny_gpt, **TIGHT, paged_kernel=False, prepacked_linears=False)
    assert eng.runner.fused_norms and not ref.runner.fused_norms
    out = eng.generate(PROMPTS, params, use_tqdm=False)
    want = ref.generate(PROMPTS, params, use_tqdm=False)
    assert [o.token_ids for o in out] == [r.token_ids for r in want]


def test_fused_norms_asked_for_where_they_cannot_build_is_an_error(tiny_gpt, monkeypatch):
    from week2_serving.engine import paged_cpu

    monkeypatch.setattr(paged_cpu, "unavailable_reason", lambda: "CalledProcessError: no c++")
    with pytest.raises(RuntimeError, match="--fused-norms: not here.*no c\\+\\+"):
        engine(tiny_gpt, fused_norms=True, paged_kernel=False)
    assert not engine(tiny_gpt).runner.fused_norms  # auto: the plain ops


# --- torch.compile of each block's dense parts (ModelRunner.compile_layers) --------------------
@pytest.mark.skipif(
    not __import__("shutil").which(__import__("os").environ.get("CXX", "c++")),
    reason="no C++ compiler: torch.compile's CPU backend cannot build its kernels",
)
def test_compiled_layers_give_the_eager_logits_and_tokens(tiny_gpt):
    """Compiled at start (N = 1 and 3), then every step size through the one dynamic graph:
    chunked prefills, prefix hits and preemption (TIGHT); greedy and seeded tokens of the eager
    path, and a mixed step's logits allclose (the compiler fuses, so not bit-identical)."""
    params = [SamplingParams(max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
    params[2] = SamplingParams(max_tokens=17, temperature=0.9, seed=7, ignore_eos=True)
    kw = dict(TIGHT, dtype="float32", prepacked_linears=False)
    ref = engine(tiny_gpt, **kw)
    eng = engine(tiny_gpt, **kw, torch_compile=True)
    assert eng.runner.compiled is not None
    out = eng.generate(PROMPTS, params, use_tqdm=False)
    assert [o.token_ids for o in out] == [
        r.token_ids for r in ref.generate(PROMPTS, params, use_tqdm=False)
    ]
    for e in (ref, eng):
        for p in PROMPTS[:3]:
            e.add_request(p, SamplingParams(max_tokens=1))
    logits = [e.runner.execute(e.scheduler.schedule()) for e in (ref, eng)]
    torch.testing.assert_close(logits[1], logits[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "bad", [dict(prepacked_linears=True), dict(fused_norms=True), dict(lora="lora")]
)
def test_torch_compile_is_refused_with_what_it_does_not_compile(tiny_gpt, bad):
    from week2_serving.engine.lora.config import LoRAConfig

    if "lora" in bad:
        bad = dict(lora=LoRAConfig())
    with pytest.raises(ValueError, match="torch_compile"):
        EngineConfig(model=tiny_gpt["hf_dir"], torch_compile=True, **bad)


# --- prepacked linears (ModelRunner.prepack_linears) -------------------------------------------
needs_onednn = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="this PyTorch build has no oneDNN"
)


@needs_onednn
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_prepacked_linears_multiply_as_the_plain_weights_do(tiny_gpt, dtype):
    """Every packed projection and the LM head give F.linear's product for any number of
    rows, not only the hint's."""
    import torch.nn.functional as F

    eng = engine(tiny_gpt, prepacked_linears=True, max_num_seqs=4, dtype=dtype)
    runner, w = eng.runner, eng.runner.weights
    names = ("qkv", "o", "gate_up", "down")
    pairs = [(getattr(lw, f"{n}_w"), getattr(lw, f"{n}_b")) for lw in w.layers for n in names]
    pairs.append((w.lm_head, None))
    assert len(runner.packed) == len({id(t) for t, _ in pairs})  # every one packed
    tol = 1e-5 if dtype == "float32" else 3e-2
    for rows in (1, 4, 7, 40):
        for weight, bias in pairs:
            x = torch.randn(rows, weight.shape[1], dtype=weight.dtype)
            got, want = runner.linear(x, weight, bias).float(), F.linear(x, weight, bias).float()
            assert torch.allclose(got, want, atol=tol, rtol=tol)


@needs_onednn
def test_prepacked_linears_keep_the_greedy_tokens(tiny_gpt):
    """Chunked prefills, prefix hits and preemption (TIGHT), greedy: the tokens of plain
    linears, with the SDPA groups and with the paged op where it builds."""
    params = [SamplingParams(max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
    ref = engine(tiny_gpt, **TIGHT, **SDPA).generate(PROMPTS, params, use_tqdm=False)
    for paged in (False, None):  # None: auto, the op where it builds
        eng = engine(tiny_gpt, **TIGHT, paged_kernel=paged, prepacked_linears=True)
        assert eng.runner.packed
        out = eng.generate(PROMPTS, params, use_tqdm=False)
        assert [o.token_ids for o in out] == [r.token_ids for r in ref]


@pytest.mark.parametrize("asked", [True, None])  # on, and auto (the default)
def test_prepacked_linears_without_onednn_leave_the_plain_weights(tiny_gpt, monkeypatch, asked):
    """No oneDNN in the build: nothing is packed and every projection is a plain F.linear."""
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    eng = engine(tiny_gpt, prepacked_linears=asked)
    assert eng.runner.packed == {} and eng.runner.prepack_linears(hint=8) == 0


def test_a_weight_onednn_refuses_stays_plain(tiny_gpt, monkeypatch):
    def refuse(t, hint):
        raise RuntimeError("could not create a primitive descriptor")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    eng = engine(tiny_gpt)  # auto: tries every weight, keeps the plain ones
    assert eng.runner.packed == {} and eng.runner.prepack_linears(hint=8) == 0
