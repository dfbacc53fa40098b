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
(`--sft-weight`, the RPO recipe); without it greedy exact match fell here.

The implicit reward of a completion is β·(log π − log π_ref); *reward accuracy* is the share
of held-out pairs whose chosen reward beats the rejected one. The behaviour it targets is
measured directly: the log-probability margin log π(chosen) − log π(rejected) on held-out
pairs (before = SFT, after = DPO; plotted), the exact match, and the rate of near-miss
answers (right digits, wrong order).
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from common.plots import plt, save
from common.results import get_logger, run_dir, runs_root, write_results
from common.timing import environment
from week3_finetune_lora.adapters import check_adapter_base, save_fingerprint
from week3_finetune_lora.data import known_tasks, read_jsonl
from week3_finetune_lora.evaluate import evaluate_rows, generate_local
from week3_finetune_lora.sft import (
    GPU_MODEL,
    LossHistory,
    check_device_dtype,
    default_data_dir,
    default_model,
    load_base,
    max_new_tokens_for,
    run_device,
    trainer_precision,
)

log = get_logger("week3.dpo")
PAIR_FIELDS = ("prompt", "completion", "rejected")


@dataclass
class DPORunConfig:
    task: str = "reverse"
    sft_adapter: str | None = None  # default: runs/week3/sft-<task>/adapter
    model: str | None = None  # default: runs/week1/hf-model (week 1's export)
    data_dir: str | None = None  # default: runs/week3/data
    beta: float = 0.1  # how far from the reference the policy may move (higher = less)
    sft_weight: float = 1.0  # + this x NLL of the chosen answer (RPO): keeps it likely
    learning_rate: float = 2e-4
    max_steps: int = 150
    batch_size: int = 16
    train_pairs: int = 2000  # preference pairs used from the train split
    eval_limit: int | None = None  # held-out pairs (None = the whole test split)
    seed: int = 0
    logging_steps: int = 10
    run_name: str | None = None
    threads: int | None = 1  # torch threads; see SFTRunConfig.threads for why 1
    max_length: int = 64  # tokens per prompt + answer
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # base weights; auto = bf16 on GPUs that have it
    offline: bool | None = None  # None: offline only if HF_HUB_OFFLINE is set (common.hub)

    def __post_init__(self) -> None:
        self.model = self.model or default_model()
        self.data_dir = self.data_dir or default_data_dir()
        if self.task not in known_tasks():
            raise ValueError(f"unknown task {self.task!r}; choose from {known_tasks()}")
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
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return DPORunConfig(**{**PRESETS[preset], **overrides})


def pairs(rows: list[dict]) -> list[dict]:
    """trl's preference format: {"prompt", "chosen", "rejected"} (standard, not chat)."""
    return [
        {"prompt": r["prompt"], "chosen": r["completion"], "rejected": r["rejected"]} for r in rows
    ]


@torch.no_grad()
def sequence_logprob(model, tok, prompts: list[str], completions: list[str]) -> torch.Tensor:
    """log π(completion + EOS | prompt) summed over the completion's tokens, per row: (N,)."""
    model.eval()
    out = []
    for p, c in zip(prompts, completions):
        p_ids = tok(p)["input_ids"]
        c_ids = tok(c)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p_ids + c_ids], device=model.device)  # (1, T)
        logits = model(ids).logits[0, :-1]  # (T-1, V): position t predicts token t+1
        logp = F.log_softmax(logits.float(), dim=-1)
        tgt = ids[0, 1:]  # (T-1,)
        lp = logp.gather(1, tgt[:, None])[:, 0]  # (T-1,)
        out.append(lp[len(p_ids) - 1 :].sum())  # only the completion's tokens
    return torch.stack(out)


def margins(model, tok, rows: list[dict]) -> torch.Tensor:
    """log π(chosen) − log π(rejected) per held-out pair: > 0 means the right answer wins."""
    prompts = [r["prompt"] for r in rows]
    return sequence_logprob(model, tok, prompts, [r["completion"] for r in rows]) - (
        sequence_logprob(model, tok, prompts, [r["rejected"] for r in rows])
    )


def behaviour(model, tok, rows: list[dict], n_new: int) -> dict:
    res = evaluate_rows(rows, lambda p: generate_local(model, tok, p, n_new))
    m = margins(model, tok, rows)
    res.pop("per_row")
    # A near miss is the right kind of answer, wrong: the right digits in the wrong order,
    # or (a label task) a valid label that is not the right one.
    kind = "same_digits" if "same_digits" in res["checks"] else "valid_label"
    return {
        "exact_match": res["exact_match"],
        "checks": res["checks"],
        "near_miss_rate": res["checks"].get(kind, 0.0) - res["exact_match"],
        "margin_mean": float(m.mean()),
        "prefers_chosen": float((m > 0).float().mean()),
        "margins": m.tolist(),
    }


def plot_before_after(before: dict, after: dict, path: Path, task: str) -> Path:
    """Left: histogram of log-prob margins (SFT vs DPO). Right: exact match and near misses."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.hist(before["margins"], bins=30, alpha=0.6, label="SFT (before DPO)")
    a.hist(after["margins"], bins=30, alpha=0.6, label="SFT + DPO")
    a.axvline(0, color="k", lw=0.8)
    a.set_xlabel("log π(chosen) − log π(rejected)")
    a.set_ylabel("held-out pairs")
    a.set_title(f"{task}: preference margin")
    a.legend()
    names = ["exact match", "near miss"]
    xs = range(len(names))
    vb = [100 * before["exact_match"], 100 * before["near_miss_rate"]]
    va = [100 * after["exact_match"], 100 * after["near_miss_rate"]]
    b.bar([x - 0.2 for x in xs], vb, 0.4, label="SFT")
    b.bar([x + 0.2 for x in xs], va, 0.4, label="SFT + DPO")
    for x, v in zip(xs, vb):
        b.text(x - 0.2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    for x, v in zip(xs, va):
        b.text(x + 0.2, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    b.set_xticks(list(xs), names)
    b.set_ylabel("% of held-out prompts")
    b.set_title("greedy answers")
    b.legend()
    return save(fig, path)


def main(cfg: DPORunConfig) -> dict:
    from datasets import Dataset
    from peft import PeftModel
    from trl import DPOConfig, DPOTrainer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = run_dir("week3", cfg.run_name)
    d = Path(cfg.data_dir) / cfg.task
    train = read_jsonl(d / "train.jsonl", PAIR_FIELDS)[: cfg.train_pairs]
    test = read_jsonl(d / "test.jsonl", PAIR_FIELDS)[: cfg.eval_limit]
    device, dtype = run_device(cfg)
    base, tok = load_base(cfg.model, "none", device, dtype, cfg.offline)
    check_adapter_base(cfg.sft_adapter, base)
    from week3_finetune_lora.adapters import base_fingerprint

    fingerprint = base_fingerprint(base, cfg.model)
    # The SFT adapter becomes the trainable "default" adapter; trl copies it as "ref".
    model = PeftModel.from_pretrained(base, cfg.sft_adapter, is_trainable=True)
    n_new = max_new_tokens_for(tok, test)
    before = behaviour(model, tok, test, n_new)
    log.info(
        "SFT: exact %.1f%%, near misses %.1f%%, mean margin %.2f",
        100 * before["exact_match"],
        100 * before["near_miss_rate"],
        before["margin_mean"],
    )
    args = DPOConfig(
        output_dir=str(out / "trainer"),
        beta=cfg.beta,
        # Pure DPO can lower log π(chosen) too, as long as log π(rejected) falls faster; on a
        # 4-token answer that breaks greedy decoding (seen here: exact match 100% -> 74% on
        # sort after 20 steps). Adding the chosen answer's NLL ("sft" loss) prevents it.
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
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        **trainer_precision(device, dtype),
        gradient_checkpointing=False,  # trl turns it on by default; a 3.5M model needs no
        # memory saving, and recomputing activations costs ~30% more time per step
        seed=cfg.seed,
        disable_tqdm=False,
    )
    history = LossHistory()
    trainer = DPOTrainer(
        model=model,
        args=args,
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
    after = behaviour(policy, tok, test, n_new)
    log.info(
        "DPO: exact %.1f%%, near misses %.1f%%, mean margin %.2f",
        100 * after["exact_match"],
        100 * after["near_miss_rate"],
        after["margin_mean"],
    )
    adapter_dir = out / "adapter"
    policy.save_pretrained(str(adapter_dir), selected_adapters=["default"])
    save_fingerprint(adapter_dir, fingerprint)
    plot_before_after(before, after, out / "before_after.png", cfg.task)
    losses = [r for r in history.rows if "loss" in r]
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


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    dflt = DPORunConfig()
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--task", default=None, choices=known_tasks(), help=f"default {dflt.task}")
    p.add_argument("--sft-adapter", default=None, help="default: runs/week3/sft-<task>/adapter")
    p.add_argument("--model", default=None, help=f"folder or hub id (default {dflt.model})")
    p.add_argument("--offline", action="store_true", default=None, help="hub cache only")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=None, help="float32 (default), auto, bfloat16, float16")
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--data-dir", default=None, help=f"default {dflt.data_dir}")
    p.add_argument("--beta", type=float, default=None)
    p.add_argument("--sft-weight", type=float, default=None, help="weight of the chosen NLL")
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--train-pairs", type=int, default=None)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--run-name", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1)")
    a = vars(p.parse_args())
    preset = a.pop("preset")
    main(make_config(preset, **{k: v for k, v in a.items() if v is not None}))
