"""From an HF folder to the runner's config and weights, and the defaults a checkpoint ships.

    cfg = load_config(folder)                       # cheap: config.json only
    weights = load_weights(folder, cfg, "cpu", torch.bfloat16, num_positions=4096)

`generation_config.json` (optional) adds EOS ids (Llama 3 lists several) and the sampling
defaults the model's authors recommend (temperature, top_p, top_k), which the engine applies
to requests that leave them unset, as vLLM's `--generation-config auto` does.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from week1_gpt_kvcache.sampling import SamplingParams
from week2_serving.engine.models.checkpoint import Checkpoint
from week2_serving.engine.models.config import ModelConfig, eos_ids
from week2_serving.engine.models.families import FAMILIES, read_config
from week2_serving.engine.models.rope import rope_tables
from week2_serving.engine.models.weights import ModelWeights

SAMPLING_KEYS = ("temperature", "top_p", "top_k")  # read from generation_config.json


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def generation_config(folder: str | Path) -> dict:
    path = Path(folder) / "generation_config.json"
    return _json(path) if path.is_file() else {}


def load_config(folder: str | Path) -> ModelConfig:
    """ModelConfig of an HF folder; its EOS ids from config.json and generation_config.json."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no config.json; point the engine at an HF model folder")
    cfg = read_config(_json(path))
    extra = generation_config(folder).get("eos_token_id")
    return dataclasses.replace(cfg, eos_token_ids=eos_ids(list(cfg.eos_token_ids), extra))


def sampling_defaults(folder: str | Path) -> dict:
    """The sampling settings generation_config.json sets (only those it sets); a value that
    SamplingParams refuses is an error naming the file."""
    gen = generation_config(folder)
    found = {k: gen[k] for k in SAMPLING_KEYS if gen.get(k) is not None}
    try:
        SamplingParams(**found)
    except ValueError as e:
        raise ValueError(f"{Path(folder) / 'generation_config.json'}: {e}") from None
    return found


@dataclass(frozen=True)
class ModelInfo:
    """What a checkpoint tells the engine before any weight loads."""

    config: ModelConfig
    eos_token_ids: tuple[int, ...]  # config.json's, generation_config.json's, the tokenizer's
    sampling_defaults: dict  # generation_config.json's temperature / top_p / top_k

    def max_model_len(self, asked: int | None) -> int:
        """The engine's context length: `asked`, bounded by the model's (None: the model's)."""
        return min(asked or self.config.max_model_len, self.config.max_model_len)


def load_tokenizer(folder: str | Path):
    """The folder's tokenizer (its chat template with it, when it has one)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def model_info(folder: str | Path, tokenizer_eos: int | None = None) -> ModelInfo:
    cfg = load_config(folder)
    eos = eos_ids(list(cfg.eos_token_ids), tokenizer_eos)
    return ModelInfo(cfg, eos, sampling_defaults(folder))


def load_weights(
    folder: str | Path,
    cfg: ModelConfig,
    device: str | torch.device,
    dtype: torch.dtype,
    num_positions: int,
) -> ModelWeights:
    """The family's weights, cast to `dtype` on `device`, with RoPE tables for positions
    [0, num_positions) (the runner's max_model_len)."""
    family = FAMILIES[cfg.architecture]
    weights = family.load_weights(cfg, Checkpoint(folder))
    check_shapes(cfg, weights)
    if cfg.positions == "rope":
        weights.rope_cos, weights.rope_sin = rope_tables(cfg, num_positions)
    return weights.to(torch.device(device), dtype)


def check_shapes(cfg: ModelConfig, w: ModelWeights) -> None:
    """The tensors have the shapes config.json promises (a mismatch: an error naming both)."""
    C, H, Hkv, D = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    first = w.layers[0]
    want = {
        "embeddings": (w.embed, (cfg.vocab_size, C)),
        "LM head": (w.lm_head, (cfg.vocab_size, C)),
        "fused QKV": (first.qkv_w, ((H + 2 * Hkv) * D, C)),
        "output projection": (first.o_w, (C, H * D)),
    }
    for name, (tensor, shape) in want.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{cfg.architecture}: the {name} weight is {tuple(tensor.shape)} but config.json "
                f"implies {shape}; the checkpoint and its config.json do not match"
            )
