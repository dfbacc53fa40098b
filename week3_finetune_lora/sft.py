"""Supervised fine-tuning with LoRA (peft + trl's SFTTrainer), or QLoRA on a 4-bit NF4 base.

    python -m week3_finetune_lora.sft --task reverse                    # LoRA, CPU preset
    python -m week3_finetune_lora.sft --task reverse --quant nf4        # QLoRA (bitsandbytes)
    python -m week3_finetune_lora.sft --task sort --rank 16 --alpha 32 --dropout 0.0
    python -m week3_finetune_lora.sft --dataset my.jsonl --model Qwen/Qwen2.5-0.5B  # online
    python -m week3_finetune_lora.sft --preset gpu --task sst2                # GPU profile
    python -m week3_finetune_lora.sft --preset gpu --task sst2 --quant nf4    # QLoRA on a GPU

The base (week 1's export by default) stays frozen; only the LoRA matrices A and B of the
attention and MLP projections train. B starts at zero, so step 0 is exactly the base model.
After training the adapter is scored on the task's held-out test set (exact match) next to
the base model, and saved to runs/week3/<run>/adapter/ with a fingerprint of its base.

The `gpu` preset fine-tunes Qwen/Qwen2.5-0.5B-Instruct (a hub id; `--offline` reads only the
local cache) in bf16 where the GPU supports it: the base weights in bf16, the LoRA matrices in
fp32 (peft keeps adapters fp32), trl's bf16 autocast; QLoRA computes each NF4 matmul in bf16.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from common.cli import parse
from common.plots import plot_curves
from common.results import get_logger, run_dir, write_results
from common.timing import environment
from week3_finetune_lora.adapters import (
    LORA_TARGETS,
    base_fingerprint,
    base_weight_bytes,
    count_parameters,
    save_fingerprint,
)
from week3_finetune_lora.config import (
    GPU_MODEL,
    check_device_dtype,
    default_data_dir,
    default_model,
    from_preset,
)
from week3_finetune_lora.generation import generate_local
from week3_finetune_lora.rows import load_dataset_rows, task_rows
from week3_finetune_lora.scoring import evaluate_rows, max_new_tokens_for
from week3_finetune_lora.tasks import get_task
from week3_finetune_lora.training import (
    LossHistory,
    add_lora,
    load_base,
    run_device,
    trainer_common,
    weight_changes,
)

log = get_logger("week3.sft")


@dataclass
class SFTRunConfig:
    """One LoRA (or QLoRA) adapter trained on one task."""

    task: str = "reverse"  # a task name from tasks.TASKS; picks runs/week3/data/<task>/
    dataset: str | None = None  # JSONL file/folder or hub id instead of the task's train split
    model: str | None = None  # base: HF folder or hub id; none: runs/week1/hf-model
    data_dir: str | None = None  # task files; none: runs/week3/data
    quant: Literal["none", "nf4"] = "none"  # none = LoRA on the base; nf4 = QLoRA (4-bit base)
    rank: int = 8  # r: the inner size of B·A
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the LoRA branch input (little data noise here: off)
    target_modules: tuple[str, ...] = LORA_TARGETS  # projections that get LoRA (vLLM-servable)
    learning_rate: float = 2e-3  # LoRA likes ~10x the full fine-tuning rate
    max_steps: int | None = None  # optimizer steps (none: the task's sft_steps in tasks.py)
    batch_size: int = 32  # rows per step
    warmup_steps: int = 30  # linear warm-up before the cosine decay
    max_length: int = 32  # tokens per example (prompt + completion + EOS)
    eval_limit: int | None = None  # test rows scored (none = all)
    eval_base: bool = True  # also score the base model (the "before")
    seed: int = 0  # torch and trainer seed
    logging_steps: int = 25  # log the loss every N steps
    run_name: str | None = None  # runs/week3/<run_name>/; none: sft-<task> or qlora-<task>
    # torch threads (none = torch's default). 1 by default: on 2 cores shared with other jobs,
    # 2 OpenMP threads spin against each other (see the README's timing notes)
    threads: int | None = 1
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N
    dtype: str = "float32"  # base weights; auto = bf16 on GPUs that have it, else float32
    offline: bool | None = (
        None  # read the local hub cache only; none: only if HF_HUB_OFFLINE is set
    )

    def __post_init__(self) -> None:
        self.model = self.model or default_model()
        self.data_dir = self.data_dir or default_data_dir()
        if self.quant not in ("none", "nf4"):
            raise ValueError(f"quant={self.quant!r}: use 'none' (LoRA) or 'nf4' (QLoRA)")
        if self.dataset is None:
            get_task(self.task)  # an unknown name lists the known ones
        check_device_dtype(self.device, self.dtype)
        if self.max_length < 8:
            raise ValueError(f"max_length={self.max_length} must be >= 8 tokens")
        if self.max_steps is None:
            self.max_steps = get_task(self.task).sft_steps if self.dataset is None else 1200
        if self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps} must be >= 1")
        if self.rank < 1 or self.alpha <= 0 or not 0 <= self.dropout < 1:
            raise ValueError(
                f"need rank >= 1, alpha > 0, 0 <= dropout < 1; got {self.rank}, {self.alpha}, "
                f"{self.dropout}"
            )
        bad = [m for m in self.target_modules if m not in LORA_TARGETS]
        if bad:
            raise ValueError(
                f"target module(s) {bad} cannot be served with LoRA by vLLM; use some of "
                f"{list(LORA_TARGETS)}"
            )
        self.target_modules = tuple(self.target_modules)
        if self.run_name is None:
            self.run_name = f"{'qlora' if self.quant == 'nf4' else 'sft'}-{self.task}"


PRESETS = {
    # tiny: for tests on the tiny export (seconds); cpu: the default run on week 1's model.
    "tiny": dict(max_steps=20, batch_size=8, eval_limit=16, logging_steps=5, warmup_steps=2),
    "cpu": {},
    # gpu: Qwen2.5-0.5B-Instruct (hub id), bf16 where supported; SST-2 sentences need ~100
    # tokens with the template; lr and steps are the usual range for LoRA on a 0.5B model
    "gpu": dict(
        model=GPU_MODEL,
        max_steps=300,
        batch_size=16,
        learning_rate=2e-4,
        warmup_steps=10,
        max_length=128,
        logging_steps=10,
        threads=None,
        dtype="auto",
    ),
}


def make_config(preset: str = "cpu", **overrides) -> SFTRunConfig:
    return from_preset(SFTRunConfig, PRESETS, preset, **overrides)


def train_rows(cfg: SFTRunConfig) -> list[dict]:
    if cfg.dataset:
        return load_dataset_rows(cfg.dataset, "train")
    return task_rows(cfg.data_dir, cfg.task, "train")


def test_rows(cfg: SFTRunConfig) -> list[dict]:
    if cfg.dataset:
        return load_dataset_rows(cfg.dataset, "test")[: cfg.eval_limit]
    return task_rows(cfg.data_dir, cfg.task, "test", cfg.eval_limit)


def trainer_args(cfg: SFTRunConfig, out, device: torch.device, dtype: torch.dtype):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out / "trainer"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.warmup_steps,
        weight_decay=0.0,
        max_length=cfg.max_length,
        completion_only_loss=True,  # loss on the answer tokens only, not on the prompt
        logging_steps=cfg.logging_steps,
        dataloader_num_workers=0,
        **trainer_common(device, dtype, cfg.seed),
    )


def train(cfg: SFTRunConfig, model, tok, rows: list[dict], out, device, dtype) -> dict:
    """Train the LoRA matrices on `rows`; returns the loss history, time and weight changes."""
    from datasets import Dataset
    from trl import SFTTrainer

    history = LossHistory()
    train_ds = Dataset.from_list(
        [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    )
    trainer = SFTTrainer(
        model=model,
        args=trainer_args(cfg, out, device, dtype),
        train_dataset=train_ds,
        processing_class=tok,
        callbacks=[history],
    )
    before_w = {n: p.detach().clone() for n, p in model.named_parameters()}
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    return {"history": history, "train_seconds": train_s, **weight_changes(model, before_w)}


def main(cfg: SFTRunConfig) -> dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = run_dir("week3", cfg.run_name)
    rows, test = train_rows(cfg), test_rows(cfg)
    device, dtype = run_device(cfg.device, cfg.dtype)
    model, tok = load_base(cfg.model, cfg.quant, device, dtype, cfg.offline)
    fingerprint = base_fingerprint(model, cfg.model)
    base_bytes = base_weight_bytes(model)
    n_new = max_new_tokens_for(tok, test)

    def scored(m) -> dict:
        res = evaluate_rows(test, lambda prompts: generate_local(m, tok, prompts, n_new))
        res.pop("per_row")
        return res

    before = scored(model) if cfg.eval_base else None
    if before is not None:
        log.info("base model exact match on %s: %.1f%%", cfg.task, 100 * before["exact_match"])
    model = add_lora(
        model, cfg.rank, cfg.alpha, cfg.dropout, cfg.target_modules, cfg.quant == "nf4"
    )
    trainable, total = count_parameters(model)
    log.info(
        "LoRA r=%d on %s: %d trainable of %d (%.2f%%)",
        cfg.rank,
        ",".join(cfg.target_modules),
        trainable,
        total,
        100 * trainable / total,
    )
    trained = train(cfg, model, tok, rows, out, device, dtype)
    history, train_s = trained.pop("history"), trained.pop("train_seconds")
    after = scored(model)
    log.info(
        "%s adapter exact match: %.1f%% (base %s) after %.0f s of training",
        cfg.run_name,
        100 * after["exact_match"],
        f"{100 * before['exact_match']:.1f}%" if before else "not scored",
        train_s,
    )
    adapter_dir = out / "adapter"
    model.save_pretrained(str(adapter_dir))
    save_fingerprint(adapter_dir, fingerprint)
    losses = history.losses()
    plot_curves(losses, "step", ["loss"], out / "loss_curve.png", title=f"{cfg.run_name}: SFT loss")
    frozen = sum(p.numel() for p in model.get_base_model().parameters() if not p.requires_grad)
    results = {
        "config": asdict(cfg),
        "task": cfg.task,
        "quant": cfg.quant,
        "adapter_dir": str(adapter_dir),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "base_weight_bytes": base_bytes,
        "base_weight_bytes_fp32": frozen * 4 if cfg.quant == "none" else None,
        **trained,
        "train_seconds": train_s,
        "seconds_per_step": train_s / max(cfg.max_steps, 1),
        "train_rows": len(rows),
        "base": before,
        "adapter": after,
        "loss_history": history.rows,
        "final_loss": losses[-1]["loss"] if losses else None,
        "environment": environment(),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
    }
    write_results(out / "results.json", results)
    return results


def parse_args(argv: list[str] | None = None) -> SFTRunConfig:
    return parse(SFTRunConfig, argv, presets=PRESETS, default_preset="cpu", description=__doc__)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    r = main(parse_args())
    print(json.dumps({k: r[k] for k in ("task", "quant", "trainable_fraction", "train_seconds")}))
