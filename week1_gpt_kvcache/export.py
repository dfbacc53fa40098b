"""Export a trained checkpoint as a Hugging Face model folder — what weeks 2 and 3 load.

    python -m week1_gpt_kvcache.export                      # runs/week1/gpt-llama-bpe -> runs/week1/hf-model
    python -m week1_gpt_kvcache.export --checkpoint runs/week1/gpt-gpt2-bpe/checkpoint.pt --out DIR

`gpt2` becomes `GPT2LMHeadModel`, `llama` becomes `LlamaForCausalLM`. The folder holds
config.json, model.safetensors, generation_config.json, tokenizer.json and
tokenizer_config.json, and loads with AutoModelForCausalLM / AutoTokenizer or vLLM.
The weight-name mapping works both ways (`to_hf_state_dict`, `from_hf_folder`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch

from common.results import get_logger, runs_root
from week1_gpt_kvcache.model import GPT, GPTConfig

log = get_logger("week1.export")


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


def export(checkpoint: Path | str, out_dir: Path | str) -> Path:
    """Write the HF folder to a temp dir beside `out_dir`, then swap it in (never half a folder)."""
    from week1_gpt_kvcache.train import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(checkpoint)
    if tok.kind != "bpe":
        raise ValueError(
            f"checkpoint {checkpoint} uses the {tok.kind!r} tokenizer; export needs the BPE one "
            "(train with --tokenizer bpe)"
        )
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        hf = to_hf_model(model, tok.eos_id)
        hf.generation_config.eos_token_id = tok.eos_id
        hf.generation_config.bos_token_id = tok.eos_id
        hf.generation_config.pad_token_id = tok.eos_id
        hf.save_pretrained(tmp, safe_serialization=True)
        tok.to_hf(model.cfg.block_size).save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        if model.cfg.arch == "llama":  # older readers (e.g. vLLM's pinned transformers) look here
            cfg.setdefault("rope_theta", model.cfg.rope_theta)
        cfg["torch_dtype"] = "float32"
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info(
        "exported %s (%s, %.2fM params) to %s",
        checkpoint,
        model.cfg.arch,
        model.num_params() / 1e6,
        out_dir,
    )
    return out_dir


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="default: runs/week1/gpt-llama-bpe/checkpoint.pt",
    )
    p.add_argument("--out", type=Path, default=None, help="default: runs/week1/hf-model")
    a = p.parse_args(argv)
    ckpt = a.checkpoint or runs_root() / "week1" / "gpt-llama-bpe" / "checkpoint.pt"
    return export(ckpt, a.out or runs_root() / "week1" / "hf-model")


if __name__ == "__main__":
    main()
