"""Week 1 checkpoints: a trained GPT back from its file, and the checks before resuming one.

A checkpoint (written by `train.py`, see `common.checkpoint` for the atomic file format) holds
the model's own config (`model_config`), so the model is rebuilt without knowing the preset it
was trained with; its tokenizer lies beside it as tokenizer.json.
"""

from __future__ import annotations

from pathlib import Path

import torch

from common.checkpoint import CheckpointError, load_checkpoint
from common.results import runs_root
from week1_gpt_kvcache.model import GPT, GPTConfig
from week1_gpt_kvcache.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer

DEFAULT_RUN = "gpt-llama-bpe"  # the run `make week1` trains; what export, generate and bench read


def default_checkpoint() -> Path:
    """runs/week1/gpt-llama-bpe/checkpoint.pt (under $IE_RUNS_DIR when set)."""
    return runs_root() / "week1" / DEFAULT_RUN / "checkpoint.pt"


def model_config_of(state: dict, path: Path) -> dict:
    """The `model_config` a week 1 checkpoint carries, or an error naming the file."""
    if "model_config" not in state:
        raise CheckpointError(f"checkpoint {path} is not a week 1 GPT checkpoint (no model_config)")
    return state["model_config"]


def load_model_and_tokenizer(
    checkpoint: Path | str | None = None, device: torch.device | str = "cpu"
) -> tuple[GPT, CharTokenizer | BPETokenizer]:
    """Rebuild the model from a checkpoint's own config (eval mode), and its tokenizer."""
    path = Path(checkpoint) if checkpoint else default_checkpoint()
    state = load_checkpoint(path)
    model = GPT(GPTConfig(**model_config_of(state, path)))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), load_tokenizer(path.parent / "tokenizer.json")


def check_resumable(state: dict, model_cfg: GPTConfig, max_steps: int, path: Path) -> None:
    """Refuse to resume into a different model or schedule, saying what differs and what to do."""
    saved = model_config_of(state, path)
    if saved != model_cfg.to_dict():
        diff = {k: (saved.get(k), v) for k, v in model_cfg.to_dict().items() if saved.get(k) != v}
        raise CheckpointError(
            f"checkpoint {path} was trained with a different model ({saved['arch']} preset); "
            f"(checkpoint, requested) differ in {diff}. Resume with the same --arch/--size, or use a "
            "new --run-name"
        )
    saved_steps = state["train_config"]["max_steps"]
    if saved_steps != max_steps:
        raise CheckpointError(
            f"checkpoint {path} was trained for max_steps={saved_steps}; "
            "resume with the same --max-steps"
        )
