"""The runner's weights: plain tensors, fused the way inference engines store them.

Q, K and V come out of one matmul (C -> (H + 2 Hkv) D) and SwiGLU's gate and up out of another
(C -> 2 I): fewer, larger matmuls, the same math with less per-call overhead (vLLM's
QKVParallelLinear and MergedColumnParallelLinear). Every projection weight is (out, in), as
`F.linear` takes it (GPT-2's Conv1D (in, out) weights are transposed on load).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch


@dataclass
class Norm:
    weight: torch.Tensor  # (C,) or (D,) for Qwen3's per-head q/k norms
    bias: torch.Tensor | None = None  # LayerNorm only


@dataclass
class LayerWeights:
    norm1: Norm  # before attention
    qkv_w: torch.Tensor  # ((H + 2 Hkv) D, C)
    qkv_b: torch.Tensor | None  # ((H + 2 Hkv) D,) Qwen2, GPT-2
    o_w: torch.Tensor  # (C, H D)
    o_b: torch.Tensor | None
    norm2: Norm  # before the MLP
    gate_up_w: torch.Tensor  # gated: (2 I, C) gate then up; GPT-2: c_fc (I, C)
    gate_up_b: torch.Tensor | None
    down_w: torch.Tensor  # (C, I)
    down_b: torch.Tensor | None
    q_norm: Norm | None = None  # Qwen3: RMSNorm over each query head, (D,)
    k_norm: Norm | None = None


@dataclass
class ModelWeights:
    embed: torch.Tensor  # (V, C) token embeddings
    layers: list[LayerWeights]
    norm_f: Norm  # the final norm
    lm_head: torch.Tensor  # (V, C); the same tensor as `embed` when tied
    pos_embed: torch.Tensor | None = None  # (P, C) GPT-2's learned positions
    rope_cos: torch.Tensor | None = None  # (P, D) cos of each position's angles
    rope_sin: torch.Tensor | None = None  # (P, D)

    def to(self, device: torch.device, dtype: torch.dtype) -> ModelWeights:
        """Every tensor moved and cast in place (tied embeddings stay one tensor)."""
        done: dict[int, torch.Tensor] = {}

        def cast(t):
            if isinstance(t, torch.Tensor):
                if id(t) not in done:
                    done[id(t)] = t.to(device=device, dtype=dtype).contiguous()
                return done[id(t)]
            if isinstance(t, (Norm, LayerWeights)):
                for f in fields(t):
                    setattr(t, f.name, cast(getattr(t, f.name)))
            return t

        for f in fields(self):
            value = getattr(self, f.name)
            setattr(self, f.name, [cast(x) for x in value] if f.name == "layers" else cast(value))
        return self


def cat(*tensors: torch.Tensor | None) -> torch.Tensor | None:
    """Concatenate along the output dim; None if all are None (no bias)."""
    present = [t for t in tensors if t is not None]
    return torch.cat(present) if present else None
