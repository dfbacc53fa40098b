"""Read a peft LoRA folder (adapter_config.json + adapter_model.safetensors) into host tensors,
arranged for the engine's fused projections.

peft stores, for every targeted Linear `W` (out, in), two matrices `lora_A` (r, in) and
`lora_B` (out, r) and a scale `s = lora_alpha / r` (`lora_alpha / sqrt(r)` with rsLoRA), so
that the layer computes `x W^T + s * (x A^T) B^T`. The engine fuses Q, K, V into one `qkv`
matmul and gate, up into one `gate_up` (model_runner.fuse): each of those gets one stacked pair

    A (in, k * R)   the k parts' A^T side by side, each padded to the slot rank R
    B (k * R, out)  block-diagonal: part i's B^T in rows i*R.., columns of its output range

so one shrink and one expand give every part's delta in its own columns (zeros elsewhere).
A module the adapter does not target stays zero: it adds nothing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

# engine projection -> the HF Llama modules fused into it, in column order
FUSED: dict[str, tuple[str, ...]] = {
    "qkv": ("q_proj", "k_proj", "v_proj"),
    "o": ("o_proj",),
    "gate_up": ("gate_proj", "up_proj"),
    "down": ("down_proj",),
}
MODULE_TO_PROJ = {m: (p, i) for p, ms in FUSED.items() for i, m in enumerate(ms)}
KEY = re.compile(r"layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.lora_([AB])(?:\.default)?\.weight$")


@dataclass
class Adapter:
    """One adapter's weights on the host, per layer and module: A (r, in), B (out, r)."""

    name: str
    path: str
    rank: int
    scale: float  # s in x W^T + s (x A^T) B^T
    weights: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]]  # (layer, module) -> A, B

    @property
    def modules(self) -> set[str]:
        return {m for _, m in self.weights}


def read_config(folder: Path) -> dict:
    """adapter_config.json, refusing what the engine does not implement (with the field)."""
    cfg_path = folder / "adapter_config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{folder}: no adapter_config.json; give a peft LoRA folder")
    cfg = json.loads(cfg_path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{folder}: peft_type {cfg.get('peft_type')!r}; only LORA is served")
    for flag in ("use_dora", "fan_in_fan_out"):
        if cfg.get(flag):
            raise ValueError(f"{folder}: {flag}=true is not supported; train a plain LoRA")
    for unsupported in ("rank_pattern", "alpha_pattern", "modules_to_save"):
        if cfg.get(unsupported):
            raise ValueError(f"{folder}: {unsupported} is not supported (one r and alpha)")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise ValueError(f"{folder}: LoRA biases are not supported (bias must be 'none')")
    return cfg


def load_adapter(name: str, path: str | Path, max_rank: int) -> Adapter:
    """Read a peft folder; FileNotFoundError if absent, ValueError if it cannot be served."""
    from safetensors.torch import load_file

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"LoRA {name!r}: {folder} is not a folder")
    cfg = read_config(folder)
    rank, alpha = int(cfg["r"]), float(cfg.get("lora_alpha", cfg["r"]))
    if not 1 <= rank <= max_rank:
        raise ValueError(
            f"LoRA {name!r} has rank {rank} > max_lora_rank={max_rank}; start the server "
            f"with --max-lora-rank {rank} or more"
        )
    scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    st = folder / "adapter_model.safetensors"
    if not st.is_file():
        raise FileNotFoundError(f"LoRA {name!r}: no adapter_model.safetensors in {folder}")
    parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, t in load_file(str(st)).items():
        m = KEY.search(key)
        if m is None or m.group(2) not in MODULE_TO_PROJ:
            raise ValueError(
                f"LoRA {name!r}: weight {key!r} targets a module the engine cannot serve; "
                f"target only {', '.join(MODULE_TO_PROJ)}"
            )
        parts.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = t.float()
    weights = {}
    for (layer, module), ab in parts.items():
        if set(ab) != {"A", "B"} or ab["A"].shape[0] != rank or ab["B"].shape[1] != rank:
            raise ValueError(f"LoRA {name!r}: layer {layer} {module} lacks A or B of rank {rank}")
        weights[(layer, module)] = (ab["A"], ab["B"])
    if not weights:
        raise ValueError(f"LoRA {name!r}: {st} holds no LoRA weights")
    return Adapter(name, str(folder), rank, scale, weights)


def fused_pair(
    adapter: Adapter, layer: int, proj: str, out_sizes: list[int], in_size: int, R: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The stacked (A (in, k R), B (k R, out)) of one fused projection; None if not targeted."""
    modules = FUSED[proj]
    if not any((layer, m) in adapter.weights for m in modules):
        return None
    A = torch.zeros(in_size, len(modules) * R)
    B = torch.zeros(len(modules) * R, sum(out_sizes))
    col = 0
    for i, (m, size) in enumerate(zip(modules, out_sizes)):
        if (layer, m) in adapter.weights:
            a, b = adapter.weights[(layer, m)]  # (r, in), (out, r)
            if a.shape[1] != in_size or b.shape[0] != size:
                raise ValueError(
                    f"LoRA {adapter.name!r}: layer {layer} {m} is ({b.shape[0]} x "
                    f"{a.shape[1]}) but the model's is ({size} x {in_size}): another base model?"
                )
            r = a.shape[0]
            A[:, i * R : i * R + r] = a.T
            B[i * R : i * R + r, col : col + size] = b.T
        col += size
    return A, B
