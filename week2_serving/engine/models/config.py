"""One config for every family: the numbers the runner needs, read from an HF `config.json`.

Hugging Face spells the same thing differently per family (`n_embd` / `hidden_size`,
`n_layer` / `num_hidden_layers`, `rope_theta` at the top or inside `rope_parameters`); each
family's reader (families.py) fills this one dataclass, and the runner reads only it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ModelConfig:
    family: str  # the FAMILIES key that read it
    architecture: str  # as config.json names it, e.g. "LlamaForCausalLM"
    vocab_size: int
    hidden_size: int  # C
    num_layers: int
    num_heads: int  # H query heads
    num_kv_heads: int  # Hkv K/V heads (GQA: H is a multiple of Hkv)
    head_dim: int  # D (Qwen3: from config, not C / H)
    intermediate_size: int  # the MLP's hidden width
    max_position_embeddings: int  # the longest context the model was trained for
    norm: str = "rms"  # "rms" (RMSNorm) | "layer" (LayerNorm with bias)
    norm_eps: float = 1e-6
    act: str = "silu"  # a key of layers.ACTIVATIONS
    gated_mlp: bool = True  # SwiGLU (gate, up, down) or GPT-2's plain fc -> act -> proj
    qkv_bias: bool = False  # Q/K/V projections have a bias (Qwen2, GPT-2)
    o_bias: bool = False  # the output projection has one (GPT-2, Llama attention_bias)
    mlp_bias: bool = False  # the MLP's projections have biases (GPT-2, Llama mlp_bias)
    qk_norm: bool = False  # RMSNorm over each Q and K head before RoPE (Qwen3)
    tie_word_embeddings: bool = False  # the LM head is the embedding matrix
    positions: str = "rope"  # "rope" | "learned" (GPT-2's wpe)
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None  # {"rope_type": "llama3" | "linear", ...}; None: plain
    sliding_window: int | None = None  # a window narrower than the context bounds its length
    eos_token_ids: tuple[int, ...] = field(default=())  # every id that ends a sequence

    def __post_init__(self) -> None:
        sizes = ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads")
        for name in (*sizes, "head_dim", "intermediate_size", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"config.json: {name}={value!r} must be an integer >= 1")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"config.json: num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"config.json: head_dim={self.head_dim} must be even for RoPE")
        for name in ("norm_eps", "rope_theta"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"config.json: {name}={value!r} must be a finite number > 0")

    @property
    def max_model_len(self) -> int:
        """The longest sequence the engine may run: the trained context, or the sliding window
        when it is narrower (up to the window, sliding attention is full attention)."""
        if self.sliding_window:
            return min(self.max_position_embeddings, self.sliding_window)
        return self.max_position_embeddings


def eos_ids(*values) -> tuple[int, ...]:
    """Every EOS id among `values` (each None, an int, or a list of ints), sorted, once each."""
    found: set[int] = set()
    for value in values:
        items = value if isinstance(value, (list, tuple)) else [value]
        for v in items:
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"eos_token_id {v!r} must be a token id (an integer >= 0)")
            found.add(v)
    return tuple(sorted(found))


def rope_settings(hf: dict) -> tuple[float, dict | None]:
    """(rope_theta, scaling) from either spelling: transformers 5 writes `rope_parameters`
    ({"rope_type", "rope_theta", ...}), older checkpoints `rope_theta` + `rope_scaling`."""
    params = hf.get("rope_parameters") or {}
    theta = params.get("rope_theta", hf.get("rope_theta", 10000.0))
    scaling = dict(hf.get("rope_scaling") or params)
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "default":
        return theta, None
    return theta, {**scaling, "rope_type": kind}
