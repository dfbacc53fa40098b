"""The reusable parts of training a GPT: the learning-rate schedule, the optimizer, the losses.

`train.py` (the script) strings these together; tests and other scripts use them alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager

import numpy as np
import torch

from week1_gpt_kvcache.corpus import get_batch
from week1_gpt_kvcache.model import GPT, BigramLM


def lr_at(step: int, lr: float, min_lr: float, warmup_steps: int, max_steps: int) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at `max_steps`."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: GPT, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices only: not on norms, biases (1-D) or embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        embedding = "wte" in name or "wpe" in name
        (decay if p.dim() >= 2 and not embedding else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def autocast_for(device: torch.device, dtype: torch.dtype) -> Callable[[], AbstractContextManager]:
    """A factory of autocast contexts: mixed precision in `dtype`, a no-op for float32."""
    return lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


@torch.no_grad()
def estimate_loss(
    model: GPT,
    tokens: torch.Tensor,
    seq_len: int,
    batch_size: int,
    iters: int,
    autocast: Callable[[], AbstractContextManager],
) -> float:
    """Mean loss over `iters` fixed batches (the same windows every time: comparable)."""
    model.eval()
    device = model.lm_head.weight.device
    gen = torch.Generator().manual_seed(12345)
    losses = []
    for _ in range(iters):
        x, y = get_batch(tokens, seq_len, batch_size, gen)
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.item())
    model.train()
    return float(np.mean(losses))


def bigram_val_loss(train: torch.Tensor, val: torch.Tensor, vocab_size: int) -> float:
    """The baseline: the best model that sees only the previous token."""
    model = BigramLM.from_counts(train, vocab_size)
    _, loss = model(val[:-1].unsqueeze(0), val[1:].unsqueeze(0))
    return loss.item()
