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

QLoRA: the frozen base is stored in 4-bit NF4 with double quantization (the absmax scales are
themselves quantized), the LoRA matrices stay fp32. On CPUs with AVX512-BF16, bitsandbytes
0.50's fast inference path breaks the next backward, so it is switched off on every
Linear4bit (`fix_bnb_cpu_backward` below says why and how).

The `gpu` preset fine-tunes Qwen/Qwen2.5-0.5B-Instruct (a hub id; `--offline` reads only the
local cache) in bf16 where the GPU supports it: the base weights in bf16, the LoRA matrices in
fp32 (peft keeps adapters fp32), trl's bf16 autocast; QLoRA computes each NF4 matmul in bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from common.device import pick_device, pick_dtype
from common.hub import is_offline, resolve_model
from common.plots import plot_curves
from common.results import get_logger, run_dir, runs_root, write_results
from common.timing import environment
from week3_finetune_lora.adapters import (
    LORA_TARGETS,
    base_fingerprint,
    base_weight_bytes,
    count_parameters,
    save_fingerprint,
)
from week3_finetune_lora.data import known_tasks, load_dataset_rows, read_jsonl
from week3_finetune_lora.evaluate import evaluate_rows, generate_local

log = get_logger("week3.sft")
GPU_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # the GPU profile's base (Qwen2: vLLM serves its LoRA)


def default_model() -> str:
    return str(runs_root() / "week1" / "hf-model")


def default_data_dir() -> str:
    return str(runs_root() / "week3" / "data")


@dataclass
class SFTRunConfig:
    task: str = "reverse"  # one of data.TASKS; picks runs/week3/data/<task>/
    dataset: str | None = None  # JSONL file/folder or hub id instead of the task's train split
    model: str | None = (
        None  # default: runs/week1/hf-model (week 1's export)  # base: HF folder or hub id
    )
    data_dir: str | None = None  # default: runs/week3/data
    quant: str = "none"  # none = LoRA on an fp32 base; nf4 = QLoRA (4-bit NF4 + double quant)
    rank: int = 8  # r: the inner size of B·A
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on the LoRA branch input (little data noise here: off)
    target_modules: tuple[str, ...] = LORA_TARGETS
    learning_rate: float = 2e-3  # LoRA likes ~10x the full fine-tuning rate
    max_steps: int | None = None  # None: the task's default in TASK_STEPS
    batch_size: int = 32
    warmup_steps: int = 30
    max_length: int = 32  # tokens per example (prompt + completion + EOS)
    eval_limit: int | None = None  # test rows scored (None = all)
    eval_base: bool = True  # also score the base model (the "before")
    seed: int = 0
    logging_steps: int = 25
    run_name: str | None = None
    # torch threads. 1 by default: on 2 cores shared with other jobs, 2 OpenMP threads spin
    # against each other (measured: 4.5 s/step with 2 threads vs 0.36 s with 1 under load;
    # idle, 2 threads are only ~1.3x faster). None = leave torch's default.
    threads: int | None = 1
    device: str = "auto"  # auto (cuda > mps > cpu) | cpu | cuda | cuda:N
    dtype: str = "float32"  # base weights; auto = bf16 on GPUs that have it, else float32
    offline: bool | None = None  # None: offline only if HF_HUB_OFFLINE is set (common.hub)

    def __post_init__(self) -> None:
        self.model = self.model or default_model()
        self.data_dir = self.data_dir or default_data_dir()
        if self.quant not in ("none", "nf4"):
            raise ValueError(f"quant={self.quant!r}: use 'none' (LoRA) or 'nf4' (QLoRA)")
        if self.dataset is None and self.task not in known_tasks():
            raise ValueError(f"unknown task {self.task!r}; choose from {known_tasks()}")
        check_device_dtype(self.device, self.dtype)
        if self.max_length < 8:
            raise ValueError(f"max_length={self.max_length} must be >= 8 tokens")
        if self.max_steps is None:
            self.max_steps = TASK_STEPS.get(self.task, 1200)
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


# Steps each task needs to pass 90% held-out exact match with margin (measured at batch 32,
# lr 2e-3): reversing takes the longest, sorting the shortest. ~0.11 s/step on 2 idle cores.
TASK_STEPS = {"reverse": 1200, "sort": 600, "shift": 800, "add": 1200}

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


def check_device_dtype(device: str, dtype: str) -> None:
    """Name checks only (a config on a CPU machine may be meant for a GPU): the device is
    looked up when the run starts."""
    kinds = ("auto", "cpu", "cuda", "mps")
    if device.split(":")[0] not in kinds:
        raise ValueError(f"device={device!r}: use auto, cpu, cuda, cuda:N or mps")
    if dtype not in ("auto", "float32", "bfloat16", "float16"):
        raise ValueError(f"dtype={dtype!r}: use auto, float32, bfloat16 or float16")


def make_config(preset: str = "cpu", **overrides) -> SFTRunConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return SFTRunConfig(**{**PRESETS[preset], **overrides})


# ---- model loading -------------------------------------------------------------------------


def load_base(
    model: str,
    quant: str = "none",
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    offline: bool | None = None,
):
    """(model, tokenizer) from a folder or hub id. quant='nf4' stores every Linear in 4-bit
    NF4 with double quant, computing in `dtype`. `device` None: CPU (the trainer moves it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_model(model, is_offline(offline))
    device = device or torch.device("cpu")
    tok = AutoTokenizer.from_pretrained(folder)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if quant == "none":
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device), tok
    m = AutoModelForCausalLM.from_pretrained(
        folder, quantization_config=nf4_config(dtype), dtype=dtype, device_map=device_map(device)
    )
    fix_bnb_cpu_backward(m)
    return m, tok


def nf4_config(compute_dtype: torch.dtype):
    """QLoRA's base format; each matmul dequantizes to `compute_dtype` (fp32 on CPU, bf16 on
    GPUs that have it)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",  # 16 levels placed at normal-distribution quantiles
        bnb_4bit_use_double_quant=True,  # quantize the per-64-weight absmax scales too
        bnb_4bit_compute_dtype=compute_dtype,
    )


def device_map(device: torch.device) -> dict[str, int] | str:
    """Where a 4-bit model is loaded: the whole model on one GPU, or the CPU."""
    if device.type == "cuda":
        return {"": device.index or 0}
    return "cpu"


def run_device(cfg) -> tuple[torch.device, torch.dtype]:
    """The device (checked against this machine) and base dtype of a run."""
    device = pick_device(cfg.device)
    return device, pick_dtype(device, cfg.dtype)


def trainer_precision(device: torch.device, dtype: torch.dtype) -> dict[str, bool]:
    """trl/transformers flags for a base in `dtype` on `device`.

    Mixed precision (bf16/fp16 autocast) only on CUDA: on CPU transformers refuses bf16
    ("Your setup doesn't support bf16/gpu"), and the CPU path trains in fp32.
    """
    cuda = device.type == "cuda"
    return {
        "use_cpu": device.type == "cpu",
        "bf16": cuda and dtype == torch.bfloat16,
        "fp16": cuda and dtype == torch.float16,
    }


def fix_bnb_cpu_backward(model: torch.nn.Module) -> int:
    """Turn off bitsandbytes' AVX512-BF16 inference path on every Linear4bit.

    Without this, on CPUs with AVX512-BF16 a no-grad forward (eval, generate) makes the next
    backward fail with "a view of a leaf Variable that requires grad is being used in an
    in-place operation". Returns how many layers were changed.
    """
    import bitsandbytes as bnb

    n = 0
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def add_lora(model, cfg: SFTRunConfig):
    from peft import LoraConfig, get_peft_model

    if cfg.quant == "nf4":
        from peft import prepare_model_for_kbit_training

        # Freezes the base and casts norms to fp32; no gradient checkpointing (tiny model).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=list(cfg.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


class LossHistory(TrainerCallback):
    """Keeps every logged row (loss, learning rate, step) for results.json and the plot."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.rows.append({"step": state.global_step, **logs})


def weight_changes(model, before: dict[str, torch.Tensor]) -> dict:
    """Which parameters moved in training: every LoRA matrix should, no base weight may."""
    trainable_changed, frozen_changed = [], []
    for name, p in model.named_parameters():
        moved = not torch.equal(p.detach(), before[name])
        if p.requires_grad:
            trainable_changed.append(moved)
        elif moved:
            frozen_changed.append(name)
    return {
        "trainable_tensors": len(trainable_changed),
        "trainable_tensors_changed": sum(trainable_changed),
        "frozen_tensors_changed": frozen_changed,
    }


# ---- main ----------------------------------------------------------------------------------


def train_rows(cfg: SFTRunConfig) -> list[dict]:
    if cfg.dataset:
        return load_dataset_rows(cfg.dataset, "train")
    return read_jsonl(Path(cfg.data_dir) / cfg.task / "train.jsonl")


def test_rows(cfg: SFTRunConfig) -> list[dict]:
    if cfg.dataset:
        return load_dataset_rows(cfg.dataset, "test")[: cfg.eval_limit]
    return read_jsonl(Path(cfg.data_dir) / cfg.task / "test.jsonl")[: cfg.eval_limit]


def max_new_tokens_for(tok, rows: list[dict]) -> int:
    """Room for the longest expected answer plus EOS and a little slack."""
    return max(len(tok(r["completion"])["input_ids"]) for r in rows) + 2


def main(cfg: SFTRunConfig) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = run_dir("week3", cfg.run_name)
    rows, test = train_rows(cfg), test_rows(cfg)
    device, dtype = run_device(cfg)
    model, tok = load_base(cfg.model, cfg.quant, device, dtype, cfg.offline)
    fingerprint = base_fingerprint(model, cfg.model)
    base_bytes = base_weight_bytes(model)
    n_new = max_new_tokens_for(tok, test)

    def gen(m):
        return lambda prompts: generate_local(m, tok, prompts, n_new)

    before = evaluate_rows(test, gen(model)) if cfg.eval_base else None
    if before is not None:
        log.info("base model exact match on %s: %.1f%%", cfg.task, 100 * before["exact_match"])

    model = add_lora(model, cfg)
    trainable, total = count_parameters(model)
    log.info(
        "LoRA r=%d on %s: %d trainable of %d (%.2f%%)",
        cfg.rank,
        ",".join(cfg.target_modules),
        trainable,
        total,
        100 * trainable / total,
    )
    args = SFTConfig(
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
        save_strategy="no",
        report_to="none",
        **trainer_precision(device, dtype),
        gradient_checkpointing=False,  # trl turns it on by default; a 3.5M model needs no
        # memory saving, and recomputing activations costs ~30% more time per step
        seed=cfg.seed,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    history = LossHistory()
    train_ds = Dataset.from_list(
        [{"prompt": r["prompt"], "completion": r["completion"]} for r in rows]
    )
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=train_ds, processing_class=tok, callbacks=[history]
    )
    before_w = {n: p.detach().clone() for n, p in model.named_parameters()}
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    changes = weight_changes(model, before_w)
    del before_w
    after = evaluate_rows(test, gen(model))
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
    losses = [r for r in history.rows if "loss" in r]
    plot_curves(losses, "step", ["loss"], out / "loss_curve.png", title=f"{cfg.run_name}: SFT loss")
    for r in (before, after):
        if r is not None:
            r.pop("per_row")
    results = {
        "config": asdict(cfg),
        "task": cfg.task,
        "quant": cfg.quant,
        "adapter_dir": str(adapter_dir),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_fraction": trainable / total,
        "base_weight_bytes": base_bytes,
        "base_weight_bytes_fp32": sum(
            p.numel() for p in model.get_base_model().parameters() if not p.requires_grad
        )
        * 4
        if cfg.quant == "none"
        else None,
        **changes,
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
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = SFTRunConfig()
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--task", default=None, choices=known_tasks(), help=f"default {d.task}")
    p.add_argument("--dataset", default=None, help="JSONL file/folder or HF dataset id")
    p.add_argument(
        "--model", default=None, help=f"base model: HF folder or hub id (default {d.model})"
    )
    p.add_argument("--offline", action="store_true", default=None, help="hub cache only")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default=None, help="float32 (default), auto, bfloat16, float16")
    p.add_argument("--data-dir", default=None, help=f"default {d.data_dir}")
    p.add_argument("--quant", default=None, choices=("none", "nf4"), help="default none")
    p.add_argument("--rank", type=int, default=None)
    p.add_argument("--alpha", type=float, default=None)
    p.add_argument("--dropout", type=float, default=None)
    p.add_argument("--target-modules", nargs="+", default=None, choices=LORA_TARGETS)
    p.add_argument("--learning-rate", type=float, default=None)
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--run-name", default=None)
    p.add_argument("--threads", type=int, default=None)
    a = vars(p.parse_args(argv))
    preset = a.pop("preset")
    return make_config(preset, **{k: v for k, v in a.items() if v is not None})


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    r = main(parse_args())
    print(json.dumps({k: r[k] for k in ("task", "quant", "trainable_fraction", "train_seconds")}))
