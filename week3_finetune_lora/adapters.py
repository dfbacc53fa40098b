"""LoRA adapters: which base they belong to, loading them safely, merging, their rank.

A LoRA adapter is two small matrices per target Linear, A (r, in) and B (out, r); the adapted
layer computes  W x + (alpha / r) · B (A x).  It is only meaningful on the exact base weights
it was trained against, so every adapter saved by this week carries `base_model.json`: a
fingerprint of the base's architecture and of a few of its weights. Loading it onto another
base fails with a message naming both, instead of producing silent garbage (same shapes) or a
shape-mismatch traceback deep inside peft (different shapes).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

# The Llama projections vLLM can put LoRA on (attention and MLP). Embeddings / lm_head LoRA
# would need extra vLLM flags, and norms cannot take LoRA at all.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
FINGERPRINT_FILE = "base_model.json"
_CONFIG_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "vocab_size",
)


class AdapterError(ValueError):
    """An adapter that does not fit the model or server it was given to."""


def base_fingerprint(model: nn.Module, model_path: str | Path | None = None) -> dict:
    """Architecture numbers + a hash of the embedding and first attention weights.

    Works on an fp32 model and on the same model loaded in 4-bit (only unquantized tensors,
    the embedding, are hashed, and the config numbers are the same).
    """
    cfg = model.config.to_dict()
    emb = model.get_input_embeddings().weight.detach().float().cpu()  # (vocab, d)
    digest = hashlib.sha256(emb[:64].contiguous().numpy().tobytes()).hexdigest()[:16]
    return {
        "path": str(model_path) if model_path is not None else cfg.get("_name_or_path"),
        "config": {k: cfg.get(k) for k in _CONFIG_KEYS},
        "embedding_sha256_16": digest,
    }


def save_fingerprint(adapter_dir: Path | str, fingerprint: dict) -> None:
    Path(adapter_dir, FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2) + "\n")


def check_adapter_base(adapter_dir: Path | str, model: nn.Module) -> None:
    """Raise AdapterError if the adapter in `adapter_dir` was trained on another base."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise AdapterError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json)")
    fp_file = adapter_dir / FINGERPRINT_FILE
    mine = base_fingerprint(model)
    if fp_file.is_file():
        theirs = json.loads(fp_file.read_text())
        if theirs["config"] != mine["config"]:
            diff = {
                k: (theirs["config"].get(k), mine["config"].get(k))
                for k in _CONFIG_KEYS
                if theirs["config"].get(k) != mine["config"].get(k)
            }
            raise AdapterError(
                f"adapter {adapter_dir} was trained for another base ({theirs['path']}); "
                f"config differs (adapter's base, this base): {diff}. Load it on its own base."
            )
        if theirs["embedding_sha256_16"] != mine["embedding_sha256_16"]:
            raise AdapterError(
                f"adapter {adapter_dir} was trained for another base ({theirs['path']}): same "
                f"architecture but different weights (embedding hash {theirs['embedding_sha256_16']}"
                f" vs {mine['embedding_sha256_16']}). Load it on the base it was trained on."
            )
    _check_shapes(adapter_dir, model)


def _check_shapes(adapter_dir: Path, model: nn.Module) -> None:
    """Each lora_A is (r, in_features) and lora_B (out_features, r) of the layer it adapts."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        return
    modules = dict(model.named_modules())
    with safe_open(str(weights), "pt") as f:
        # keys look like base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            if ".lora_A." not in key and ".lora_B." not in key:
                continue
            name = key.split(".lora_")[0].removeprefix("base_model.model.")
            layer = modules.get(name)
            if layer is None or not hasattr(layer, "in_features"):
                raise AdapterError(
                    f"adapter {adapter_dir} adapts layer {name!r}, which this base does not have; "
                    "it was trained for another base"
                )
            shape = tuple(f.get_slice(key).get_shape())
            ok = (
                shape[1] == layer.in_features
                if ".lora_A." in key
                else shape[0] == layer.out_features
            )
            if not ok:
                raise AdapterError(
                    f"adapter {adapter_dir}: {key} has shape {shape} but layer {name} is "
                    f"{layer.in_features}->{layer.out_features}; it was trained for another base"
                )


def load_adapter(model: nn.Module, adapter_dir: Path | str, model_path=None) -> nn.Module:
    """`model` wrapped by peft with the adapter in `adapter_dir`, after checking it fits."""
    from peft import PeftModel

    check_adapter_base(adapter_dir, model)
    return PeftModel.from_pretrained(model, str(adapter_dir))


def adapter_rank(adapter_dir: Path | str) -> int:
    """The LoRA rank r of a saved adapter (the largest, if layers differ)."""
    cfg_path = Path(adapter_dir) / "adapter_config.json"
    if not cfg_path.is_file():
        raise AdapterError(f"{adapter_dir} is not a LoRA adapter folder (no adapter_config.json)")
    cfg = json.loads(cfg_path.read_text())
    return max([int(cfg["r"]), *[int(v) for v in (cfg.get("rank_pattern") or {}).values()]])


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a 4-bit weight counts as its unpacked size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2  # two 4-bit values per stored byte
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


def base_weight_bytes(model: nn.Module) -> int:
    """Bytes of the base's weights as stored (4-bit packed + absmax scales, or full floats)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for m in model.modules():  # bitsandbytes keeps the per-block scales beside the weight
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None:
            total += qs.absmax.numel() * qs.absmax.element_size()
            if getattr(qs, "state2", None) is not None:  # double quant: scales of the scales
                total += qs.state2.absmax.numel() * qs.state2.absmax.element_size()
                total += qs.state2.code.numel() * qs.state2.code.element_size()
    return total


def merged_copy(peft_model) -> nn.Module:
    """A plain model with W' = W + (alpha/r)·B·A folded in (the adapter wrapper removed)."""
    import copy

    return copy.deepcopy(peft_model).merge_and_unload()


@torch.no_grad()
def lora_delta_norms(peft_model) -> dict[str, float]:
    """||(alpha/r)·B·A|| per adapted layer: zero before training (B starts at 0)."""
    out = {}
    for name, m in peft_model.named_modules():
        if hasattr(m, "lora_A") and "default" in getattr(m, "lora_A", {}):
            delta = m.get_delta_weight("default")  # (out, in)
            out[name] = float(delta.norm())
    return out
