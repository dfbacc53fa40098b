"""The per-token functions of a block: norms and MLP activations, the way HF computes them."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from week2_serving.engine.models.weights import Norm


def _gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


# hidden_act / activation_function names -> the function (GPT-2's gelu_new is tanh GELU)
ACTIVATIONS = {
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "gelu_new": _gelu_tanh,
    "gelu_pytorch_tanh": _gelu_tanh,
}


def rms_norm(x: torch.Tensor, w: Norm, eps: float) -> torch.Tensor:
    """RMSNorm as HF's Llama/Qwen compute it: normalised in float32, cast back to x's dtype,
    then scaled (at bf16 the order matters for matching HF token for token)."""
    return w.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def norm(kind: str, x: torch.Tensor, w: Norm, eps: float) -> torch.Tensor:
    """The block's norm over the last dim: "rms" or "layer" (LayerNorm with its bias)."""
    if kind == "rms":
        return rms_norm(x, w, eps)
    return F.layer_norm(x, (x.shape[-1],), w.weight, w.bias, eps)
