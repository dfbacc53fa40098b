"""The model families the engine serves: configs, weights and the table that picks them.

Read in this order: config.py (ModelConfig, one for all families) -> families.py (FAMILIES,
the lookup by architecture) -> llama.py / gpt2.py (each family's names and switches) ->
checkpoint.py (safetensors, single or sharded) -> rope.py (RoPE and its scaling) ->
weights.py (fused tensors) -> layers.py (norms, activations) -> loader.py (all of it together).
The forward pass over these weights is the engine's model_runner.py.
"""

from week2_serving.engine.models.config import ModelConfig
from week2_serving.engine.models.families import FAMILIES, family_for
from week2_serving.engine.models.loader import (
    ModelInfo,
    load_config,
    load_tokenizer,
    load_weights,
    model_info,
    sampling_defaults,
)
from week2_serving.engine.models.weights import LayerWeights, ModelWeights

__all__ = [
    "FAMILIES",
    "LayerWeights",
    "ModelConfig",
    "ModelInfo",
    "ModelWeights",
    "family_for",
    "load_config",
    "load_tokenizer",
    "load_weights",
    "model_info",
    "sampling_defaults",
]
