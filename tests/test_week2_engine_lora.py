"""Multi-LoRA in our engine: BGMV == SGMV == the row-by-row definition, and every adapter's
greedy tokens equal the merged model's (peft merge_and_unload + HF generate) in one batch that
mixes three adapters and the base, prefill chunks and decodes in the same steps, with prefix
caching on and fewer slots than adapters (so slots are evicted and requests wait for one).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.lora_helpers import ADAPTERS, lora_engine, lora_folders, merged_generate  # noqa: F401
from week2_serving.engine.lora import manager as lora_manager
from week2_serving.engine.lora.ops import (
    add_grouped,
    bgmv,
    groups_of,
    lora_reference,
    segments_of,
    sgmv,
)

PROMPTS = [
    list(range(5, 19)),  # 14 tokens: a prefill chunked over several steps
    [20, 21, 22],
    list(range(5, 15)) + [40, 41],  # shares 2 full blocks with the first
]
MAX_TOKENS = 6


# --- the kernels ---------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 9),
    slots=st.integers(1, 4),
    rank=st.sampled_from([1, 2, 3, 8]),
    d_in=st.integers(1, 12),
    d_out=st.integers(1, 12),
    seed=st.integers(0, 2**16),
)
def test_bgmv_equals_sgmv_equals_reference(n, slots, rank, d_in, d_out, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    A = torch.randn(slots, d_in, rank, generator=g, dtype=torch.float64)
    B = torch.randn(slots, rank, d_out, generator=g, dtype=torch.float64)
    scales = torch.rand(slots, generator=g, dtype=torch.float64) + 0.5
    idx = torch.randint(0, slots, (n,), generator=g)
    want = lora_reference(x, A, B, scales, idx)
    assert want.abs().sum() > 0  # the check has something to compare
    torch.testing.assert_close(bgmv(x, A, B, scales, idx), want)
    torch.testing.assert_close(sgmv(x, A, B, scales, segments_of(idx.tolist())), want)
    groups = groups_of(idx, scales.tolist())
    assert sorted(g[0] for g in groups) == sorted(set(idx.tolist()))  # one group per slot
    torch.testing.assert_close(add_grouped(torch.zeros_like(want), x, A, B, groups), want)


def test_groups_of_uses_a_slice_for_consecutive_rows():
    groups = groups_of(torch.tensor([2, 2, 1, 2]), [0.0, 0.5, 2.0])
    assert groups[0] == (1, slice(2, 3), 0.5)
    assert groups[1][0] == 2 and groups[1][1].tolist() == [0, 1, 3] and groups[1][2] == 2.0
    # bf16 activations, float32 adapters (the engine on a CPU): the delta lands in bf16
    g = torch.Generator().manual_seed(0)
    x, A, B = (torch.randn(*s, generator=g) for s in ((4, 16), (3, 16, 4), (3, 4, 8)))
    want = lora_reference(x, A, B, torch.tensor([0.0, 0.5, 2.0]), torch.tensor([2, 2, 1, 2]))
    y = add_grouped(torch.zeros(4, 8, dtype=torch.bfloat16), x.bfloat16(), A, B, groups)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), want, atol=0.1, rtol=0.03)


def test_segments_of_groups_runs():
    assert segments_of([0, 0, 2, 2, 1]) == [(0, 2, 0), (2, 4, 2), (4, 5, 1)]
    assert segments_of([]) == []


# --- the engine against the merged model ---------------------------------------------------------
@pytest.fixture(scope="module")
def lora_models(lora_folders: dict) -> dict:  # noqa: F811 (the imported fixture)
    """The tiny base, three adapters on it, and each one's merged-model greedy tokens."""
    base, paths = lora_folders["base"], lora_folders["paths"]
    want = {None: merged_generate(base, None, PROMPTS, MAX_TOKENS)}
    for name, path in paths.items():
        want[name] = merged_generate(base, path, PROMPTS, MAX_TOKENS)
    return {**lora_folders, "want": want}


def run(engine, requests: list[tuple[list[int], str | None]]) -> list:
    """Add every request, then step until all are done; the sequences."""
    from week2_serving.engine.sequence import SamplingParams

    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0.0)
    seqs = [engine.make_sequence(p, params, lora_name=name) for p, name in requests]
    for s in seqs:
        engine.add_sequence(s)
    while engine.has_unfinished():
        engine.step()
    return seqs


def test_every_adapter_matches_its_merged_model_in_one_mixed_batch(lora_models):
    engine = lora_engine(lora_models)
    plans = []
    plan = engine.lora.plan
    engine.runner.lora.plan = lambda *a: plans.append(plan(*a)) or plans[-1]
    names = [None, *ADAPTERS]
    requests = [(p, name) for p in PROMPTS for name in names]  # interleaved: every step mixes
    seqs = run(engine, requests)
    for (prompt, name), seq in zip(requests, seqs):
        want = lora_models["want"][name][PROMPTS.index(prompt)]
        assert seq.output_token_ids == want, f"adapter {name} on prompt {prompt}"
    # the adapters change the tokens (else this test could not fail)
    assert len({tuple(lora_models["want"][n][0]) for n in names}) == len(names)
    # steps mixed prefill chunks and decodes of adapters, and more adapters than slots ran
    assert any(p is not None and p.num_prefill and p.num_decode for p in plans)
    assert engine.lora.num_slot_loads > 2
    assert engine.block_manager.prefix_hits > 0  # prefix caching was on and used


def test_grouped_and_gathered_plans_give_the_reference_delta(lora_models, monkeypatch):
    """The plan for few adapters (one matmul pair each) and for many (SGMV chunks + BGMV
    decode rows) add the same delta as the row-by-row definition, on a step mixing both."""
    from types import SimpleNamespace

    manager = lora_engine(lora_models).lora
    names = [None, "all4", "qv8", "all4", None, "qv8"]
    num_tokens = [3, 1, 4, 1, 1, 2]  # prefill chunks and decodes, base rows between
    seqs = [SimpleNamespace(lora_name=n) for n in names]
    x = torch.randn(sum(num_tokens), manager.shapes["qkv"][0])  # (N, in)
    plans = []
    for most in (6, 0):  # 0: every step takes the gather path
        monkeypatch.setattr(lora_manager, "GROUPED_MAX", most)
        plans.append(manager.plan(seqs, num_tokens))
    assert plans[0].gather is None and plans[1].gather is not None
    assert (plans[0].num_decode, plans[0].num_prefill) == (2, 6)
    slots = [manager.slot_of[n] if n else 0 for n in names]
    idx = torch.repeat_interleave(torch.tensor(slots), torch.tensor(num_tokens))  # (N,)
    A, B = manager.A[1]["qkv"], manager.B[1]["qkv"]
    want = lora_reference(x, A, B, manager.scales, idx)
    assert want.abs().sum() > 0
    for plan in plans:
        torch.testing.assert_close(manager.delta(1, "qkv", x, plan), want)


def test_adapters_never_share_prefix_cache_blocks(lora_models):
    engine = lora_engine(lora_models)
    bm = engine.block_manager
    (first,) = run(engine, [(PROMPTS[0], "all4")])
    assert first.num_cached_prompt == 0
    for name in ("qv8", None):  # same prompt, another adapter or the base: nothing shared
        (seq,) = run(engine, [(PROMPTS[0], name)])
        assert seq.num_cached_prompt == 0, name
        assert seq.output_token_ids == lora_models["want"][name][0]
    hits = bm.prefix_hits
    (again,) = run(engine, [(PROMPTS[0], "all4")])  # the same adapter: shared
    assert again.num_cached_prompt > 0 and bm.prefix_hits > hits
    assert again.output_token_ids == lora_models["want"]["all4"][0]


def test_reloaded_name_gets_fresh_cache_keys(lora_models):
    """An adapter unloaded and loaded again under the same name (maybe other weights) must not
    find the old one's K/V."""
    engine = lora_engine(lora_models)
    run(engine, [(PROMPTS[0], "all4")])
    engine.lora.remove("all4")
    engine.lora.add("all4", str(lora_models["paths"]["mlp2"]))
    (seq,) = run(engine, [(PROMPTS[0], "all4")])
    assert seq.num_cached_prompt == 0
    assert seq.output_token_ids == lora_models["want"]["mlp2"][0]


def test_unknown_adapter_is_refused_by_name(lora_models):
    engine = lora_engine(lora_models)
    with pytest.raises(ValueError, match="no LoRA adapter named 'nope'"):
        engine.make_sequence([1, 2], lora_name="nope")
