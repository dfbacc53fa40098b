"""Post-training int8 quantization of a small model, by hand and with torchao.

By hand: per-output-channel symmetric int8 weights. For each output channel c,
    scale[c] = max|w[c]| / 127,   q = clamp(round(w / scale), -127, 127),   w ≈ q * scale.
Weights are stored as int8 (+ one fp32 scale per channel) and dequantized in forward.
torchao: `Int8DynamicActivationInt8WeightConfig` (int8 weights, activations quantized on the
fly per token), applied with `quantize_`; it quantizes nn.Linear layers, convolutions stay fp32.
Sizes: what a model costs on disk, and the bytes of the layers quantization targets.
"""

from __future__ import annotations

import copy
import io
import logging

import torch
import torch.nn.functional as F
from torch import nn

QMAX = 127  # symmetric: use [-127, 127] so that +x and -x quantize to +q and -q


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: w (C_out, ...) -> (q int8 same shape, scale (C_out,))."""
    w = w.detach().float()
    max_abs = w.abs().flatten(1).amax(dim=1)  # (C_out,)
    scale = (max_abs / QMAX).clamp(min=1e-12)  # an all-zero channel gets a tiny scale, not 0/0
    shape = (-1,) + (1,) * (w.dim() - 1)  # broadcast scale over the other dims
    q = torch.round(w / scale.view(shape)).clamp(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.view((-1,) + (1,) * (q.dim() - 1))


class Int8Linear(nn.Module):
    """A Linear whose weight lives in int8; forward dequantizes it (weight-only quantization)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        q, scale = quantize_per_channel(linear.weight)
        self.register_buffer("weight_int8", q)  # (out, in) int8
        self.register_buffer("weight_scale", scale)  # (out,) fp32
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, dequantize_per_channel(self.weight_int8, self.weight_scale), self.bias)


class Int8Conv2d(nn.Module):
    """A Conv2d with int8 weights (per output channel), dequantized in forward."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        q, scale = quantize_per_channel(conv.weight)
        self.register_buffer("weight_int8", q)  # (out, in, kh, kw) int8
        self.register_buffer("weight_scale", scale)  # (out,) fp32
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = (
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize_per_channel(self.weight_int8, self.weight_scale)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def quantize_model_by_hand(model: nn.Module) -> nn.Module:
    """A copy of `model` with every Linear and Conv2d replaced by its int8 version."""
    model = copy.deepcopy(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, Int8Linear(child))
        elif isinstance(child, nn.Conv2d):
            setattr(model, name, Int8Conv2d(child))
        else:
            setattr(model, name, quantize_model_by_hand(child))
    return model


def quantize_model_torchao(model: nn.Module) -> nn.Module:
    """A copy of `model` with torchao's int8 dynamic-activation / int8-weight quantization."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = copy.deepcopy(model)
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def state_dict_bytes(model: nn.Module) -> int:
    """Size of the saved state_dict: what the model costs on disk."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getbuffer())


def tensor_storage_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's data, including the inner tensors of quantized tensor subclasses."""
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_storage_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def layer_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights (and scales) of the Linear/Conv layers: the part quantization targets."""
    total = 0
    for mod in model.modules():
        if isinstance(mod, nn.Linear | nn.Conv2d):
            total += tensor_storage_bytes(mod.weight)
        elif isinstance(mod, Int8Linear | Int8Conv2d):
            total += tensor_storage_bytes(mod.weight_int8) + tensor_storage_bytes(mod.weight_scale)
    return total
