"""GPT-2: learned positions, LayerNorm with biases, tanh-GELU MLP (no gate), biases everywhere.

HF stores its projections as `Conv1D`, whose weight is (in, out): transposed here to the
(out, in) that `F.linear` takes. Q, K and V are already fused (`attn.c_attn`). Names come with
a `transformer.` prefix (GPT2LMHeadModel) or without one (some older checkpoints).
The MLP's c_fc and c_proj go through the runner's "gate_up" and "down" projections.
"""

from __future__ import annotations

from week2_serving.engine.models.checkpoint import Checkpoint
from week2_serving.engine.models.config import ModelConfig, eos_ids
from week2_serving.engine.models.layers import ACTIVATIONS
from week2_serving.engine.models.weights import LayerWeights, ModelWeights, Norm


def read_config(hf: dict, family: str, architecture: str) -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise ValueError(f"GPT-2 activation_function {act!r} is not one of {sorted(ACTIVATIONS)}")
    if hf.get("scale_attn_by_inverse_layer_idx") or hf.get("scale_attn_weights") is False:
        raise ValueError("GPT-2 with non-standard attention scaling is not supported")
    C = hf.get("n_embd", 768)
    heads = hf.get("n_head", 12)
    return ModelConfig(
        family=family,
        architecture=architecture,
        vocab_size=hf.get("vocab_size", 50257),
        hidden_size=C,
        num_layers=hf.get("n_layer", 12),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=C // heads,
        intermediate_size=hf.get("n_inner") or 4 * C,
        max_position_embeddings=hf.get("n_positions", 1024),
        norm="layer",
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        act=act,
        gated_mlp=False,
        qkv_bias=True,
        o_bias=True,
        mlp_bias=True,
        tie_word_embeddings=bool(hf.get("tie_word_embeddings", True)),
        positions="learned",
        eos_token_ids=eos_ids(hf.get("eos_token_id")),
    )


def load_weights(cfg: ModelConfig, ck: Checkpoint) -> ModelWeights:
    pre = "transformer." if ck.has("transformer.wte.weight") else ""

    def norm(name: str) -> Norm:
        return Norm(ck.get(name + ".weight"), ck.get(name + ".bias"))

    layers = []
    for i in range(cfg.num_layers):
        p = f"{pre}h.{i}."
        layers.append(
            LayerWeights(
                norm1=norm(p + "ln_1"),
                qkv_w=ck.get(p + "attn.c_attn.weight").t(),
                qkv_b=ck.get(p + "attn.c_attn.bias"),
                o_w=ck.get(p + "attn.c_proj.weight").t(),
                o_b=ck.get(p + "attn.c_proj.bias"),
                norm2=norm(p + "ln_2"),
                gate_up_w=ck.get(p + "mlp.c_fc.weight").t(),
                gate_up_b=ck.get(p + "mlp.c_fc.bias"),
                down_w=ck.get(p + "mlp.c_proj.weight").t(),
                down_b=ck.get(p + "mlp.c_proj.bias"),
            )
        )
    embed = ck.get(pre + "wte.weight")
    tied = cfg.tie_word_embeddings or not ck.has("lm_head.weight")
    return ModelWeights(
        embed=embed,
        layers=layers,
        norm_f=norm(pre + "ln_f"),
        lm_head=embed if tied else ck.get("lm_head.weight"),
        pos_embed=ck.get(pre + "wpe.weight"),
    )
