"""Exercise 4 (week 0), worked: per-tensor int8 against per-channel int8.

    .venv/bin/python -m week0_pytorch.solutions.per_tensor_int8

Per-tensor quantization uses ONE scale, `max|W| / 127`, for the whole weight. A channel whose
weights are small then sits on a few of the 255 levels (or rounds to zero), so its relative
error grows; per-channel gives each output row its own scale and keeps every row's error at
most half its own step. The script builds a weight whose rows span two orders of magnitude and
prints each scheme's relative error on the smallest and the largest rows.
"""

from __future__ import annotations

import torch

from week0_pytorch.int8 import QMAX, dequantize_per_channel, quantize_per_channel


def quantize_per_tensor(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 with one scale: w (any shape) -> (q int8 same shape, scale ())."""
    w = w.detach().float()
    scale = (w.abs().amax() / QMAX).clamp(min=1e-12)  # () one step size for every weight
    q = torch.round(w / scale).clamp(-QMAX, QMAX).to(torch.int8)
    return q, scale


def row_relative_error(w: torch.Tensor, w_hat: torch.Tensor) -> torch.Tensor:
    """||w_row - w_hat_row|| / ||w_row|| for each output row: (C_out,)."""
    return (w - w_hat).flatten(1).norm(dim=1) / w.flatten(1).norm(dim=1).clamp(min=1e-12)


def compare(w: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each scheme's per-row relative error on the same weight (C_out, ...)."""
    q_t, s_t = quantize_per_tensor(w)
    q_c, s_c = quantize_per_channel(w)
    return {
        "per_tensor": row_relative_error(w, q_t.float() * s_t),
        "per_channel": row_relative_error(w, dequantize_per_channel(q_c, s_c)),
    }


def skewed_weight(rows: int = 16, cols: int = 64, seed: int = 0) -> torch.Tensor:
    """A (rows, cols) weight whose row magnitudes run from 0.01 to 1 (as trained layers do)."""
    gen = torch.Generator().manual_seed(seed)
    magnitude = torch.logspace(-2, 0, rows).unsqueeze(1)  # (rows, 1)
    return torch.randn(rows, cols, generator=gen) * magnitude


def main() -> dict[str, float]:
    errors = compare(skewed_weight())
    out = {}
    for name, err in errors.items():
        out[f"{name}_smallest_row"] = float(err[0])
        out[f"{name}_largest_row"] = float(err[-1])
        print(f"{name:12s} relative error: smallest row {err[0]:.4f}, largest row {err[-1]:.4f}")
    return out


if __name__ == "__main__":
    main()
