"""Direct Preference Optimization (trl's DPOTrainer) on top of an SFT LoRA adapter.

    python -m week3_finetune_lora.dpo --task reverse            # starts from runs/week3/sft-reverse
    python -m week3_finetune_lora.dpo --task reverse --beta 0.1 --max-steps 150
    python -m week3_finetune_lora.dpo --preset gpu      # sst2 on Qwen2.5-0.5B-Instruct, bf16

Preference pairs come from the task data: chosen = the right answer, rejected = the plausible
wrong one (for `reverse`, the right answer with two neighbouring digits swapped — the near
miss an SFT adapter still makes). DPO raises log π(chosen) − log π(rejected) relative to the
reference model (the SFT adapter, frozen as trl's "ref" adapter copy):

    loss = −log σ( β·[(log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l))] )

Pure DPO may lower log π(chosen) as well, so a weighted NLL on the chosen answer is added
(`--sft-weight`, the RPO recipe); the README shows what happens without it.

The implicit reward of a completion is β·(log π − log π_ref); *reward accuracy* is the share
of held-out pairs whose chosen reward beats the rejected one. The margins, exact match and
near misses before (SFT) and after (DPO) come from preference.py.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import torch

from common.cli import parse
from common.results import get_logger, run_dir, runs_root, write_results
from common.timing import environment
from week3_finetune_lora.adapters import base_fingerprint, check_adapter_base, save_fingerprint
from week3_finetune_lora.config import (
    GPU_MODEL,
    check_device_dtype,
    default_data_dir,
    default_model,
    from_preset,
)
from week3_finetune_lora.preference import behaviour, pairs, plot_before_after
from week3_finetune_lora.rows import PAIR_FIELDS, task_rows
from week3_finetune_lora.scoring import max_new_tokens_for
from week3_finetune_lora.tasks import get_task
from week3_finetune_lora.training import LossHistory, load_base, run_device, trainer_common

log = get_logger("week3.dpo")


@dataclass
class DPORunConfig:
    """DPO (+ the chosen answer's NLL) from a task's SFT adapter."""

    task: str = "reverse"  # a task name from tasks.TASKS
    sft_adapter: str | None = None  # the starting adapter; none: runs/week3/sft-<task>/adapter
    model: str | None = None  # base: HF folder or hub id; none: runs/week1/hf-model
    data_dir: str | None = None  # task files; none: runs/week3/data
    beta: float = 0.1  # how far from the reference the policy may move (higher = less)
    sft_weight: float = 1.0  # + this x NLL of the chosen answer (RPO): keeps it likely
    learning_rate: float = 2e-4  # peak learning rate (cosine decay)
    max_steps: int = 150  # optimizer steps
    batch_size: int = 16  # pairs per step
    train_pairs: int = 2000  # preference pairs used from the train split
    eval_limit: int | None = None  # held-out pairs (none = the whole test split)
    seed: int = 0  # torch and trainer seed
    logging_steps: int = 10  # log the loss every N steps
    run_name: str | None = None  # runs/week3/<run_name>/; none: dpo-<task>
    threads: int | None = 1  # torch threads (none = torch's default); see sft --threads
    max_length: int = 64  # tokens per prompt + answer
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # base weights; auto = bf16 on GPUs that have it
    offline: bool | None = (
        None  # read the local hub cache only; none: only if HF_HUB_OFFLINE is set
    )

    def __post_init__(self) -> None:
        self.model = self.model or default_model()
        self.data_dir = self.data_dir or default_data_dir()
        get_task(self.task)
        check_device_dtype(self.device, self.dtype)
        if self.beta <= 0:
            raise ValueError(f"beta={self.beta} must be > 0")
        if self.sft_weight < 0:
            raise ValueError(f"sft_weight={self.sft_weight} must be >= 0")
        if self.sft_adapter is None:
            self.sft_adapter = str(runs_root() / "week3" / f"sft-{self.task}" / "adapter")
        self.run_name = self.run_name or f"dpo-{self.task}"


PRESETS = {
    "tiny": dict(max_steps=6, batch_size=4, train_pairs=24, eval_limit=8, logging_steps=1),
    "cpu": {},
    # gpu: SST-2 (chosen = the right label, rejected = the other) on Qwen2.5-0.5B-Instruct
    "gpu": dict(
        task="sst2",
        model=GPU_MODEL,
        learning_rate=5e-5,
        max_steps=100,
        train_pairs=2000,
        eval_limit=300,
        max_length=160,
        threads=None,
        dtype="auto",
    ),
}


def make_config(preset: str = "cpu", **overrides) -> DPORunConfig:
    return from_preset(DPORunConfig, PRESETS, preset, **overrides)


def trainer_args(cfg: DPORunConfig, out, device: torch.device, dtype: torch.dtype):
    from trl import DPOConfig

    return DPOConfig(
        output_dir=str(out / "trainer"),
        beta=cfg.beta,
        # Pure DPO can lower log π(chosen) too, as long as log π(rejected) falls faster; on a
        # 4-token answer that breaks greedy decoding. Adding the chosen answer's NLL ("sft"
        # loss) prevents it.
        loss_type=["sigmoid", "sft"] if cfg.sft_weight > 0 else ["sigmoid"],
        loss_weights=[1.0, cfg.sft_weight] if cfg.sft_weight > 0 else None,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(cfg.max_steps // 20, 1),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=64,
        max_length=cfg.max_length,
        logging_steps=cfg.logging_steps,
        eval_strategy="no",
        **trainer_common(device, dtype, cfg.seed),
    )


def _log_behaviour(stage: str, res: dict) -> None:
    log.info(
        "%s: exact %.1f%%, near misses %.1f%%, mean margin %.2f",
        stage,
        100 * res["exact_match"],
        100 * res["near_miss_rate"],
        res["margin_mean"],
    )


def main(cfg: DPORunConfig) -> dict:
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOTrainer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = run_dir("week3", cfg.run_name)
    train = task_rows(cfg.data_dir, cfg.task, "train", cfg.train_pairs, PAIR_FIELDS)
    test = task_rows(cfg.data_dir, cfg.task, "test", cfg.eval_limit, PAIR_FIELDS)
    device, dtype = run_device(cfg.device, cfg.dtype)
    base, tok = load_base(cfg.model, "none", device, dtype, cfg.offline)
    check_adapter_base(cfg.sft_adapter, base)
    fingerprint = base_fingerprint(base, cfg.model)
    # The SFT adapter becomes the trainable "default" adapter; trl copies it as "ref".
    model = PeftModel.from_pretrained(base, cfg.sft_adapter, is_trainable=True)
    n_new = max_new_tokens_for(tok, test)
    before = behaviour(model, tok, test, n_new, cfg.task)
    _log_behaviour("SFT", before)
    history = LossHistory()
    trainer = DPOTrainer(
        model=model,
        args=trainer_args(cfg, out, device, dtype),
        train_dataset=Dataset.from_list(pairs(train)),
        eval_dataset=Dataset.from_list(pairs(test)),
        processing_class=tok,
        callbacks=[history],
    )
    first = trainer.evaluate()  # held-out DPO loss before any step (= log 2: policy == ref)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    held_out = trainer.evaluate()
    log.info(
        "held-out reward accuracy %.3f, margin %.3f, loss %.4f -> %.4f",
        held_out["eval_rewards/accuracies"],
        held_out["eval_rewards/margins"],
        first["eval_loss"],
        held_out["eval_loss"],
    )
    policy = trainer.model
    after = behaviour(policy, tok, test, n_new, cfg.task)
    _log_behaviour("DPO", after)
    adapter_dir = out / "adapter"
    policy.save_pretrained(str(adapter_dir), selected_adapters=["default"])
    save_fingerprint(adapter_dir, fingerprint)
    plot_before_after(before, after, out / "before_after.png", cfg.task)
    losses = history.losses()
    results = {
        "config": asdict(cfg),
        "task": cfg.task,
        "adapter_dir": str(adapter_dir),
        "train_seconds": train_s,
        "held_out_before": {k: first[k] for k in first if k.startswith("eval_")},
        "held_out": {k: held_out[k] for k in held_out if k.startswith("eval_")},
        "reward_accuracy": held_out["eval_rewards/accuracies"],
        "reward_margin": held_out["eval_rewards/margins"],
        "sft": {k: v for k, v in before.items() if k != "margins"},
        "dpo": {k: v for k, v in after.items() if k != "margins"},
        "exact_match_change_points": 100 * (after["exact_match"] - before["exact_match"]),
        "loss_history": history.rows,
        "first_loss": losses[0]["loss"] if losses else None,
        "final_loss": losses[-1]["loss"] if losses else None,
        "plots": ["before_after.png"],
        "environment": environment(),
    }
    write_results(out / "results.json", results)
    return results


def parse_args(argv: list[str] | None = None) -> DPORunConfig:
    return parse(DPORunConfig, argv, presets=PRESETS, default_preset="cpu", description=__doc__)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(parse_args())
