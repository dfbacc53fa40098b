"""FAMILIES: which Hugging Face architectures the engine serves, and who reads each one.

A checkpoint's config.json names its class in `architectures` (e.g. ["Qwen2ForCausalLM"]) and
its kind in `model_type` ("qwen2"). The engine looks the architecture up here (the model_type
when a config has no `architectures`); anything else is refused, naming what is supported.

Where to add a family: a module with `read_config(hf, family, architecture) -> ModelConfig`
and `load_weights(cfg, checkpoint) -> ModelWeights` (see llama.py, gpt2.py), and one entry
below. If its block differs (a new norm, a new MLP), the runner's `layer` grows a switch read
from ModelConfig.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from week2_serving.engine.models import gpt2, llama
from week2_serving.engine.models.checkpoint import Checkpoint
from week2_serving.engine.models.config import ModelConfig
from week2_serving.engine.models.weights import ModelWeights


@dataclass(frozen=True)
class Family:
    name: str  # ModelConfig.family
    model_type: str  # config.json's model_type
    read_config: Callable[[dict, str, str], ModelConfig]
    load_weights: Callable[[ModelConfig, Checkpoint], ModelWeights]


LLAMA = Family("llama", "llama", llama.read_config, llama.load_weights)  # also SmolLM2
MISTRAL = Family("mistral", "mistral", llama.read_config, llama.load_weights)
QWEN2 = Family("qwen2", "qwen2", llama.read_config, llama.load_weights)  # Qwen2 and 2.5
QWEN3 = Family("qwen3", "qwen3", llama.read_config, llama.load_weights)
GPT2 = Family("gpt2", "gpt2", gpt2.read_config, gpt2.load_weights)

# HF `architectures` name -> its family
FAMILIES: dict[str, Family] = {
    "LlamaForCausalLM": LLAMA,
    "MistralForCausalLM": MISTRAL,
    "Qwen2ForCausalLM": QWEN2,
    "Qwen3ForCausalLM": QWEN3,
    "GPT2LMHeadModel": GPT2,
}
BY_MODEL_TYPE = {f.model_type: (arch, f) for arch, f in FAMILIES.items()}


def family_for(hf: dict) -> tuple[str, Family]:
    """(architecture, family) of a config.json dict; ValueError naming it if unsupported."""
    archs = hf.get("architectures") or []
    if not isinstance(archs, list):
        archs = [archs]
    for arch in archs:
        if arch in FAMILIES:
            return arch, FAMILIES[arch]
    model_type = hf.get("model_type")
    if not archs and model_type in BY_MODEL_TYPE:
        return BY_MODEL_TYPE[model_type]
    named = archs[0] if archs else f"model_type {model_type!r}"
    raise ValueError(
        f"architecture {named} is not supported by this engine; supported: "
        f"{', '.join(FAMILIES)} (add a family in week2_serving/engine/models/families.py)"
    )


def read_config(hf: dict) -> ModelConfig:
    arch, fam = family_for(hf)
    return fam.read_config(hf, fam.name, arch)
