"""The reusable parts of training an MNIST classifier: augmentation, prediction, scoring.

`train.py` (the script) runs the loop; `quantize.py` and the tests use these on their own.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random rotation (±10°), scale (±10%) and shift (±2 px) of a (B, 1, 28, 28) batch."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(b, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (2 / 14)  # grid units: 14 px = 1.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    background = x.amin()  # normalized value of a black pixel
    return F.grid_sample(x - background, grid, align_corners=False) + background


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    """Logits for float images x (N, 1, 28, 28), in eval mode, batched."""
    model.eval()
    out = [
        model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict:
    logits = predict(model, x, device)
    return {
        "loss": F.cross_entropy(logits, y).item(),
        "acc": (logits.argmax(1) == y).float().mean().item(),
    }


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, n: int = 10) -> torch.Tensor:
    """(n, n) counts: row = true class, column = predicted class."""
    return torch.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)
