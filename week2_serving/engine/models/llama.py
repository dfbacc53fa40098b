"""The Llama family and its variants: Llama 2 / 3.x, Mistral, SmolLM2, Qwen2 / 2.5, Qwen3.

One block for all of them: RMSNorm -> attention (GQA, RoPE) -> RMSNorm -> SwiGLU MLP, with
HF's names `model.layers.{i}.self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`. What differs
is a few switches read from config.json:

| family  | Q/K/V bias        | o bias          | q/k norm | tied embeddings    | window        |
|---------|-------------------|-----------------|----------|--------------------|---------------|
| llama   | attention_bias    | attention_bias  | -        | tie_word_embeddings (3.2) | -      |
| mistral | -                 | -               | -        | tie_word_embeddings | sliding_window |
| qwen2   | always            | -               | -        | tie_word_embeddings | if use_sliding_window |
| qwen3   | attention_bias    | attention_bias  | per head | tie_word_embeddings | if use_sliding_window |
"""

from __future__ import annotations

from week2_serving.engine.models.checkpoint import Checkpoint
from week2_serving.engine.models.config import ModelConfig, eos_ids, rope_settings
from week2_serving.engine.models.layers import ACTIVATIONS
from week2_serving.engine.models.weights import LayerWeights, ModelWeights, Norm, cat


def read_config(hf: dict, family: str, architecture: str) -> ModelConfig:
    """ModelConfig from a Llama-style config.json (`family` switches the table above)."""
    act = hf.get("hidden_act", "silu")
    if act not in ACTIVATIONS:
        raise ValueError(f"{architecture}: hidden_act {act!r} is not one of {sorted(ACTIVATIONS)}")
    theta, scaling = rope_settings(hf)
    heads = _get(hf, "num_attention_heads")
    bias = bool(hf.get("attention_bias", False))
    window = hf.get("sliding_window")
    if family != "mistral" and not hf.get("use_sliding_window", False):
        window = None  # Qwen: the window applies only when use_sliding_window is on
    return ModelConfig(
        family=family,
        architecture=architecture,
        vocab_size=_get(hf, "vocab_size"),
        hidden_size=_get(hf, "hidden_size"),
        num_layers=_get(hf, "num_hidden_layers"),
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        head_dim=hf.get("head_dim") or _get(hf, "hidden_size") // heads,
        intermediate_size=_get(hf, "intermediate_size"),
        max_position_embeddings=_get(hf, "max_position_embeddings"),
        norm="rms",
        norm_eps=hf.get("rms_norm_eps", 1e-6),
        act=act,
        gated_mlp=True,
        qkv_bias=bias or family == "qwen2",
        o_bias=bias and family != "qwen2",
        mlp_bias=bool(hf.get("mlp_bias", False)),
        qk_norm=family == "qwen3",
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
        positions="rope",
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=window,
        eos_token_ids=eos_ids(hf.get("eos_token_id")),
    )


def _get(hf: dict, key: str):
    if key not in hf:
        raise ValueError(f"config.json has no {key!r}; is this a complete HF model folder?")
    return hf[key]


def load_weights(cfg: ModelConfig, ck: Checkpoint) -> ModelWeights:
    """The fused weights from HF's tensor names, in the checkpoint's dtype."""

    def opt(name: str, wanted: bool):
        return ck.get(name) if wanted else None

    layers = []
    for i in range(cfg.num_layers):
        a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        qkv = [ck.get(f"{a}{x}_proj.weight") for x in "qkv"]
        qkv_b = [opt(f"{a}{x}_proj.bias", cfg.qkv_bias) for x in "qkv"]
        layers.append(
            LayerWeights(
                norm1=Norm(ck.get(f"model.layers.{i}.input_layernorm.weight")),
                qkv_w=cat(*qkv),
                qkv_b=cat(*qkv_b),
                o_w=ck.get(a + "o_proj.weight"),
                o_b=opt(a + "o_proj.bias", cfg.o_bias),
                norm2=Norm(ck.get(f"model.layers.{i}.post_attention_layernorm.weight")),
                gate_up_w=cat(ck.get(m + "gate_proj.weight"), ck.get(m + "up_proj.weight")),
                gate_up_b=cat(
                    opt(m + "gate_proj.bias", cfg.mlp_bias), opt(m + "up_proj.bias", cfg.mlp_bias)
                ),
                down_w=ck.get(m + "down_proj.weight"),
                down_b=opt(m + "down_proj.bias", cfg.mlp_bias),
                q_norm=Norm(ck.get(a + "q_norm.weight")) if cfg.qk_norm else None,
                k_norm=Norm(ck.get(a + "k_norm.weight")) if cfg.qk_norm else None,
            )
        )
    embed = ck.get("model.embed_tokens.weight")
    tied = cfg.tie_word_embeddings or not ck.has("lm_head.weight")
    return ModelWeights(
        embed=embed,
        layers=layers,
        norm_f=Norm(ck.get("model.norm.weight")),
        lm_head=embed if tied else ck.get("lm_head.weight"),
    )
