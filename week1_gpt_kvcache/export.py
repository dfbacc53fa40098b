"""Export a trained checkpoint as a Hugging Face model folder — what weeks 2 and 3 load.

    python -m week1_gpt_kvcache.export                      # runs/week1/gpt-llama-bpe -> runs/week1/hf-model
    python -m week1_gpt_kvcache.export --checkpoint runs/week1/gpt-gpt2-bpe/checkpoint.pt --out DIR

`gpt2` becomes `GPT2LMHeadModel`, `llama` becomes `LlamaForCausalLM` (the mapping lives in
`hf_convert.py`). The folder holds config.json, model.safetensors, generation_config.json,
tokenizer.json and tokenizer_config.json, and loads with AutoModelForCausalLM / AutoTokenizer
or vLLM.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from common.cli import parse
from common.results import get_logger, runs_root
from week1_gpt_kvcache.checkpoint import default_checkpoint, load_model_and_tokenizer
from week1_gpt_kvcache.hf_convert import to_hf_model

log = get_logger("week1.export")


@dataclass
class ExportConfig:
    """Export a week 1 checkpoint as a Hugging Face model folder."""

    checkpoint: Path | None = None  # checkpoint.pt; None = runs/week1/gpt-llama-bpe/checkpoint.pt
    out: Path | None = None  # the folder to write; None = runs/week1/hf-model


def write_hf_folder(model, tok, folder: Path) -> None:
    """config.json, safetensors weights, generation config and tokenizer files into `folder`."""
    hf = to_hf_model(model, tok.eos_id)
    hf.generation_config.eos_token_id = tok.eos_id
    hf.generation_config.bos_token_id = tok.eos_id
    hf.generation_config.pad_token_id = tok.eos_id
    hf.save_pretrained(folder, safe_serialization=True)
    tok.to_hf(model.cfg.block_size).save_pretrained(folder)
    cfg_path = folder / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if model.cfg.arch == "llama":  # older readers (e.g. vLLM's pinned transformers) look here
        cfg.setdefault("rope_theta", model.cfg.rope_theta)
    cfg["torch_dtype"] = "float32"
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")


def export(checkpoint: Path | str, out_dir: Path | str) -> Path:
    """Write the HF folder to a temp dir beside `out_dir`, then swap it in (never half a folder)."""
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
        write_hf_folder(model, tok, tmp)
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


def main(cfg: ExportConfig) -> Path:
    ckpt = cfg.checkpoint or default_checkpoint()
    return export(ckpt, cfg.out or runs_root() / "week1" / "hf-model")


if __name__ == "__main__":
    main(parse(ExportConfig, description=__doc__))
