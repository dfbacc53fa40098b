"""Our GPT <-> Hugging Face transformers: the config and the weight names, both ways.

`gpt2` maps to `GPT2LMHeadModel`, `llama` to `LlamaForCausalLM`. GPT-2 stores q/k/v fused in
one `c_attn` and its Linear weights transposed (`Conv1D` is (in, out)); Llama's names map one to
one. `to_hf_model` puts our weights into a transformers model, `from_hf_folder` reads an exported
(or any plain GPT-2/Llama) folder back into our GPT, which week 2's engine runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from week1_gpt_kvcache.model import GPT, GPTConfig


def hf_config(cfg: GPTConfig, eos_id: int | None = None):
    """The transformers config equivalent to our GPTConfig."""
    from transformers import GPT2Config, LlamaConfig

    tokens = dict(bos_token_id=eos_id, eos_token_id=eos_id)
    if cfg.arch == "gpt2":
        return GPT2Config(
            vocab_size=cfg.vocab_size,
            n_positions=cfg.block_size,
            n_embd=cfg.n_embd,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_inner=cfg.mlp_hidden,
            activation_function="gelu_new",
            layer_norm_epsilon=cfg.norm_eps,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=cfg.tie_weights,
            **tokens,
        )
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.n_embd,
        intermediate_size=cfg.mlp_hidden,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_kv_head,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.block_size,
        rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=cfg.tie_weights,
        **tokens,
    )


def config_from_hf(hf: dict) -> GPTConfig:
    """Our GPTConfig from a config.json dict of a GPT-2 or Llama model."""
    mt = hf.get("model_type")
    if mt == "gpt2":
        if hf.get("activation_function", "gelu_new") not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(
                f"GPT-2 activation {hf['activation_function']!r} is not supported (tanh GELU only)"
            )
        return GPTConfig(
            arch="gpt2",
            vocab_size=hf["vocab_size"],
            block_size=hf["n_positions"],
            n_layer=hf["n_layer"],
            n_head=hf["n_head"],
            n_embd=hf["n_embd"],
            mlp_hidden=hf.get("n_inner") or 4 * hf["n_embd"],
            tie_weights=hf.get("tie_word_embeddings", True),
            norm_eps=hf["layer_norm_epsilon"],
        )
    if mt == "llama":
        rope = hf.get("rope_parameters") or {}
        if rope.get("rope_type", "default") != "default" or hf.get("rope_scaling"):
            raise ValueError("only plain RoPE is supported (no rope scaling)")
        cfg = GPTConfig(
            arch="llama",
            vocab_size=hf["vocab_size"],
            block_size=hf["max_position_embeddings"],
            n_layer=hf["num_hidden_layers"],
            n_head=hf["num_attention_heads"],
            n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            n_embd=hf["hidden_size"],
            mlp_hidden=hf["intermediate_size"],
            tie_weights=hf.get("tie_word_embeddings", False),
            norm_eps=hf["rms_norm_eps"],
            rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)),
        )
        if hf.get("head_dim", cfg.head_dim) != cfg.head_dim:
            raise ValueError(
                f"head_dim={hf['head_dim']} != hidden_size/num_heads={cfg.head_dim}: not supported"
            )
        return cfg
    raise ValueError(f"model_type {mt!r} is not supported; export/load handles 'gpt2' and 'llama'")


def _layer_map(cfg: GPTConfig, i: int) -> dict[str, str]:
    """Our parameter name -> HF name, for block i (GPT-2's fused/transposed weights handled apart)."""
    if cfg.arch == "llama":
        p = f"model.layers.{i}."
        return {
            "norm1.weight": p + "input_layernorm.weight",
            "norm2.weight": p + "post_attention_layernorm.weight",
            "attn.wq.weight": p + "self_attn.q_proj.weight",
            "attn.wk.weight": p + "self_attn.k_proj.weight",
            "attn.wv.weight": p + "self_attn.v_proj.weight",
            "attn.wo.weight": p + "self_attn.o_proj.weight",
            "mlp.gate.weight": p + "mlp.gate_proj.weight",
            "mlp.up.weight": p + "mlp.up_proj.weight",
            "mlp.down.weight": p + "mlp.down_proj.weight",
        }
    p = f"transformer.h.{i}."
    return {
        "norm1.weight": p + "ln_1.weight",
        "norm1.bias": p + "ln_1.bias",
        "norm2.weight": p + "ln_2.weight",
        "norm2.bias": p + "ln_2.bias",
        "attn.wo.bias": p + "attn.c_proj.bias",
        "mlp.fc.bias": p + "mlp.c_fc.bias",
        "mlp.proj.bias": p + "mlp.c_proj.bias",
    }


def _top_map(cfg: GPTConfig) -> dict[str, str]:
    if cfg.arch == "llama":
        return {
            "wte.weight": "model.embed_tokens.weight",
            "norm_f.weight": "model.norm.weight",
            "lm_head.weight": "lm_head.weight",
        }
    return {
        "wte.weight": "transformer.wte.weight",
        "wpe.weight": "transformer.wpe.weight",
        "norm_f.weight": "transformer.ln_f.weight",
        "norm_f.bias": "transformer.ln_f.bias",
        "lm_head.weight": "lm_head.weight",
    }


def to_hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under HF names (GPT-2: q/k/v fused into c_attn, Conv1D weights transposed)."""
    cfg, sd = model.cfg, model.state_dict()
    out = {hf: sd[ours].detach().clone() for ours, hf in _top_map(cfg).items()}
    for i in range(cfg.n_layer):
        blk = {k[len(f"blocks.{i}.") :]: v for k, v in sd.items() if k.startswith(f"blocks.{i}.")}
        out.update({hf: blk[ours].detach().clone() for ours, hf in _layer_map(cfg, i).items()})
        if cfg.arch == "gpt2":  # Conv1D stores (in, out): transpose our (out, in) Linear weights
            p = f"transformer.h.{i}."
            out[p + "attn.c_attn.weight"] = (
                torch.cat([blk["attn.wq.weight"], blk["attn.wk.weight"], blk["attn.wv.weight"]])
                .t()
                .contiguous()
            )
            out[p + "attn.c_attn.bias"] = torch.cat(
                [blk["attn.wq.bias"], blk["attn.wk.bias"], blk["attn.wv.bias"]]
            )
            out[p + "attn.c_proj.weight"] = blk["attn.wo.weight"].t().contiguous()
            out[p + "mlp.c_fc.weight"] = blk["mlp.fc.weight"].t().contiguous()
            out[p + "mlp.c_proj.weight"] = blk["mlp.proj.weight"].t().contiguous()
    return out


def from_hf_state_dict(cfg: GPTConfig, hf_sd: dict[str, torch.Tensor]) -> GPT:
    """The inverse of `to_hf_state_dict`: build our GPT and fill it from HF-named weights."""
    model = GPT(cfg)
    sd: dict[str, torch.Tensor] = {}
    hf_sd = dict(hf_sd)
    if cfg.tie_weights:
        hf_sd.setdefault("lm_head.weight", hf_sd[_top_map(cfg)["wte.weight"]])
    for ours, hf in _top_map(cfg).items():
        sd[ours] = hf_sd[hf]
    C = cfg.n_embd
    for i in range(cfg.n_layer):
        for ours, hf in _layer_map(cfg, i).items():
            sd[f"blocks.{i}.{ours}"] = hf_sd[hf]
        if cfg.arch == "gpt2":
            p, b = f"transformer.h.{i}.", f"blocks.{i}."
            w, bias = hf_sd[p + "attn.c_attn.weight"].t(), hf_sd[p + "attn.c_attn.bias"]
            for j, name in enumerate(("wq", "wk", "wv")):
                sd[b + f"attn.{name}.weight"] = w[j * C : (j + 1) * C]
                sd[b + f"attn.{name}.bias"] = bias[j * C : (j + 1) * C]
            sd[b + "attn.wo.weight"] = hf_sd[p + "attn.c_proj.weight"].t()
            sd[b + "mlp.fc.weight"] = hf_sd[p + "mlp.c_fc.weight"].t()
            sd[b + "mlp.proj.weight"] = hf_sd[p + "mlp.c_proj.weight"].t()
    model.load_state_dict({k: v.contiguous() for k, v in sd.items()}, strict=True)
    return model


def to_hf_model(model: GPT, eos_id: int | None = None):
    """A transformers model (GPT2LMHeadModel / LlamaForCausalLM) holding our weights."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_config(hf_config(model.cfg, eos_id), dtype=torch.float32)
    missing, unexpected = hf.load_state_dict(to_hf_state_dict(model), strict=False)
    missing = [k for k in missing if not (model.cfg.tie_weights and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"weight mapping incomplete: missing {missing}, unexpected {unexpected}")
    if model.cfg.tie_weights:
        hf.tie_weights()
    return hf.eval()


def from_hf_folder(folder: Path | str, device: torch.device | str = "cpu") -> GPT:
    """Load an HF GPT-2/Llama folder (safetensors) into our GPT — used by week 2's engine."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"{folder} has no config.json; pass an exported Hugging Face model folder"
        )
    cfg = config_from_hf(json.loads((folder / "config.json").read_text()))
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{folder} has no *.safetensors weights")
    sd: dict[str, torch.Tensor] = {}
    for f in files:
        sd.update(load_file(str(f)))
    return from_hf_state_dict(cfg, {k: v.float() for k, v in sd.items()}).to(device).eval()
