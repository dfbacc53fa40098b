"""What SFT and DPO share: loading the base (plain or 4-bit NF4), adding LoRA, trainer flags.

QLoRA: the frozen base is stored in 4-bit NF4 with double quantization (the absmax scales are
themselves quantized), the LoRA matrices stay fp32. On CPUs with AVX512-BF16, bitsandbytes'
fast inference path breaks the next backward, so it is switched off on every Linear4bit
(`fix_bnb_cpu_backward` below says how).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import TrainerCallback

from common.device import pick_device, pick_dtype
from common.hub import is_offline, resolve_model


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


def run_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """The device (checked against this machine) and base dtype of a run."""
    dev = pick_device(device)
    return dev, pick_dtype(dev, dtype)


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


def add_lora(
    model, rank: int, alpha: float, dropout: float, targets: Sequence[str], quantized: bool
):
    """`model` wrapped by peft with fresh LoRA matrices (B = 0: step 0 is the base)."""
    from peft import LoraConfig, get_peft_model

    if quantized:
        from peft import prepare_model_for_kbit_training

        # Freezes the base and casts norms to fp32; no gradient checkpointing (tiny model).
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    lora = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(targets),
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

    def losses(self) -> list[dict]:
        """The rows that carry a training loss."""
        return [r for r in self.rows if "loss" in r]


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


def trainer_common(device: torch.device, dtype: torch.dtype, seed: int) -> dict:
    """TrainingArguments both trainers share: no checkpoints, no reporting, the precision."""
    return dict(
        save_strategy="no",
        report_to="none",
        **trainer_precision(device, dtype),
        # trl turns gradient checkpointing on by default; a tiny model needs no memory saving,
        # and recomputing activations makes every step slower
        gradient_checkpointing=False,
        seed=seed,
        disable_tqdm=False,
    )
