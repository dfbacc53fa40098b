"""Merging a LoRA adapter into its base weight, by hand (what peft's `merge_and_unload` does).

A LoRA layer computes  y = x Wᵀ + s · (x Aᵀ) Bᵀ  with A (r, in), B (out, r) and the scaling
s = alpha / r. Because (x Aᵀ) Bᵀ = x (B A)ᵀ, the two terms fold into one matrix:

    W' = W + s · B A          (out, in)

so the merged model runs at the base model's speed, with the adapter's outputs. The price: one
merged copy per adapter (multi-LoRA serving keeps A and B apart instead).
"""

from __future__ import annotations

import torch


def merge_lora(
    weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float
) -> torch.Tensor:
    """W + scaling · B A, a new tensor; weight (out, in), lora_a (r, in), lora_b (out, r)."""
    # LAB:lora-merge begin
    # HINT: check the shapes first: A is (r, in), B is (out, r), W is (out, in).
    # HINT: the merged matrix is W + scaling * (B @ A); do not modify `weight` in place.
    out_f, in_f = weight.shape
    r = lora_a.shape[0]
    if lora_a.shape != (r, in_f) or lora_b.shape != (out_f, r):
        raise ValueError(
            f"LoRA shapes do not fit W {tuple(weight.shape)}: A {tuple(lora_a.shape)} must be "
            f"(r, {in_f}) and B {tuple(lora_b.shape)} must be ({out_f}, r)"
        )
    return weight + scaling * (lora_b @ lora_a)
    # LAB:lora-merge end


def lora_scaling(alpha: float, rank: int, use_rslora: bool = False) -> float:
    """alpha / r (peft's default), or alpha / √r with rank-stabilised LoRA."""
    return alpha / rank**0.5 if use_rslora else alpha / rank
