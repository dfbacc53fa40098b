"""The checks that grade each lab (common/labs.py), as plain functions of no argument.

Each one raises (AssertionError, or the stub's NotImplementedError) when the lab's code is
wrong. They read the lab's functions through their modules at call time, so a test can swap
in a stubbed module and see them fail. Tiny sizes: the whole set runs in about a second.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from tests.lab_checks_week2 import CHECKS as WEEK2_CHECKS


def kvcache_bytes() -> None:
    from week1_gpt_kvcache import kvcache

    assert kvcache.kv_cache_bytes(3, 2, 8, 10, 4, 2) == 2 * 3 * 2 * 8 * 10 * 4 * 2
    cache = kvcache.KVCache(3, 4, 2, 10, 8, dtype=torch.float16)
    assert cache.allocated_bytes == kvcache.kv_cache_bytes(3, 2, 8, 10, 4, 2)


def kvcache_update() -> None:
    from week1_gpt_kvcache.kvcache import KVCache

    cache = KVCache(n_layer=2, batch_size=2, n_kv_head=3, max_len=6, head_dim=4)
    k1, v1 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)  # (B, Hkv, T=4, D)
    k, v = cache.update(1, k1, v1)
    assert k.shape == (2, 3, 4, 4) and torch.equal(k, k1) and torch.equal(v, v1)
    assert cache.length == 0, "update must not advance: the model calls advance once per step"
    cache.advance(4)
    k2, v2 = torch.randn(2, 3, 2, 4), torch.randn(2, 3, 2, 4)
    k, v = cache.update(1, k2, v2)
    assert torch.equal(k, torch.cat([k1, k2], 2)) and torch.equal(v, torch.cat([v1, v2], 2))
    assert torch.count_nonzero(cache.k[0]) == 0, "layer 0 was never written"
    cache.advance(2)
    try:
        cache.update(0, k2, v2)
    except ValueError:
        pass
    else:
        raise AssertionError("writing past max_len must raise ValueError")


def kvcache_generate() -> None:
    from week1_gpt_kvcache.generate import SamplingParams, generate
    from week1_gpt_kvcache.model import GPT, make_config

    torch.manual_seed(0)
    model = GPT(make_config("llama", "tiny", vocab_size=97)).eval()
    prompts, params = [[1, 2, 3], [5, 6, 7, 8, 9]], SamplingParams(max_tokens=12)
    cached = generate(model, prompts, params, use_cache=True).tokens
    assert cached == generate(model, prompts, params, use_cache=False).tokens


def lora_merge_equals_peft() -> None:
    from peft import LoraConfig, get_peft_model

    from week3_finetune_lora import lora_merge

    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Linear(8, 6))
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=6, target_modules=["0"]))
    layer = model.base_model.model[0]
    with torch.no_grad():
        layer.lora_B["default"].weight.normal_()  # peft starts B at zero: make it matter
    w, a, b = (t.detach().clone() for t in (layer.base_layer.weight, layer.lora_A["default"].weight,
                                             layer.lora_B["default"].weight))  # fmt: skip
    ours = lora_merge.merge_lora(w, a, b, lora_merge.lora_scaling(6, 2))
    assert torch.equal(w, layer.base_layer.weight), "merge_lora must not modify the weight"
    merged = model.merge_and_unload()[0].weight
    torch.testing.assert_close(ours, merged)


def lora_merge_same_outputs() -> None:
    from week3_finetune_lora.lora_merge import merge_lora

    torch.manual_seed(1)
    w, a, b, x = torch.randn(5, 7), torch.randn(3, 7), torch.randn(5, 3), torch.randn(4, 7)
    on_the_fly = x @ w.T + 0.5 * (x @ a.T) @ b.T  # (4, 5)
    torch.testing.assert_close(x @ merge_lora(w, a, b, 0.5).T, on_the_fly)
    try:
        merge_lora(w, b, a, 0.5)
    except ValueError:
        pass
    else:
        raise AssertionError("A and B swapped must raise ValueError naming the shapes")


def dpo_loss_values() -> None:
    from week3_finetune_lora.dpo_loss import dpo_loss

    same = torch.tensor([-3.0, -7.0])
    losses, rc, rr = dpo_loss(same, same - 1, same, same - 1, beta=0.1)
    torch.testing.assert_close(losses, torch.full((2,), math.log(2)))  # policy == reference
    assert torch.count_nonzero(rc) == 0 and torch.count_nonzero(rr) == 0
    # hand-derived: chosen log-ratio +2, rejected -3, beta 0.1 -> -log sigmoid(0.5)
    losses, rc, rr = dpo_loss(torch.tensor([-1.0]), torch.tensor([-8.0]), torch.tensor([-3.0]),
                              torch.tensor([-5.0]), beta=0.1)  # fmt: skip
    torch.testing.assert_close(losses, torch.tensor([math.log1p(math.exp(-0.5))]))
    torch.testing.assert_close((rc, rr), (torch.tensor([0.2]), torch.tensor([-0.3])))


def dpo_loss_gradient() -> None:
    from week3_finetune_lora.dpo_loss import dpo_loss

    pc, pr = torch.tensor([-2.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    rc, rr = torch.tensor([-2.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    losses, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5)
    losses.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item(), "descent must raise chosen, lower rejected"
    assert rc.grad is None and rr.grad is None, "the reference gets no gradient"
    huge, _, _ = dpo_loss(torch.tensor([0.0]), torch.tensor([-1e4]), torch.tensor([0.0]),
                          torch.tensor([0.0]), beta=1.0)  # fmt: skip
    assert torch.isfinite(huge).all() and huge.item() < 1e-6, "stable for large margins"


CHECKS: dict[str, list[Callable[[], None]]] = {
    "kvcache": [kvcache_bytes, kvcache_update, kvcache_generate],
    "lora-merge": [lora_merge_equals_peft, lora_merge_same_outputs],
    "dpo-loss": [dpo_loss_values, dpo_loss_gradient],
    **WEEK2_CHECKS,
}
