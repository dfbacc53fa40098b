"""Train the GPT on the prepared corpus.

    python -m week1_gpt_kvcache.prepare                  # once: corpus + tokenizer + token ids
    python -m week1_gpt_kvcache.train                    # llama preset, BPE, ~8 min on 2 cores
    python -m week1_gpt_kvcache.train --arch gpt2 --max-steps 300
    python -m week1_gpt_kvcache.train --resume           # continue a killed run

AdamW (no weight decay on norms/biases/embeddings), linear warmup then cosine decay, gradient
clipping, validation loss every `eval_interval` steps, atomic checkpoints (the best and the
last). Writes runs/week1/<run-name>/: checkpoint.pt, tokenizer.json, metrics.jsonl,
loss_curve.png, samples.txt, results.json.
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from common.device import pick_device, pick_dtype
from common.plots import plot_curves
from common.results import MetricsLogger, get_logger, read_json, run_dir, runs_root, save_results
from common.timing import environment
from week1_gpt_kvcache.generate import SamplingParams, generate
from week1_gpt_kvcache.model import ARCHS, GPT, SIZES, BigramLM, GPTConfig, make_config
from week1_gpt_kvcache.tokenizer import load_tokenizer

log = get_logger("week1.train")


@dataclass
class TrainConfig:
    arch: str = "llama"  # model family: gpt2 | llama
    size: str = "cpu"  # model dimensions: tiny | cpu | gpu (see model.SIZES)
    tokenizer: str = "bpe"  # which prepared data: runs/week1/data-<tokenizer>
    data_dir: str | None = None  # overrides the folder above
    seq_len: int = 256  # training window (<= block_size)
    batch_size: int = 16
    max_steps: int = 400
    lr: float = 2e-3  # peak learning rate
    min_lr: float = 1e-4  # end of the cosine
    warmup_steps: int = 50
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dropout: float = 0.2
    eval_interval: int = 50
    eval_iters: int = 20
    seed: int = 0
    device: str = "auto"
    dtype: str = "auto"  # bf16 autocast on GPUs that support it, fp32 on CPU
    run_name: str | None = None  # default gpt-<arch>-<tokenizer>
    resume: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r}: use one of {', '.join(ARCHS)}")
        if self.size not in SIZES:
            raise ValueError(f"size={self.size!r}: use one of {', '.join(SIZES)}")
        for name in ("seq_len", "batch_size", "max_steps", "eval_interval", "eval_iters"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 < self.min_lr <= self.lr < 1:
            raise ValueError(f"need 0 < min_lr <= lr < 1, got min_lr={self.min_lr}, lr={self.lr}")
        if self.run_name is None:
            self.run_name = f"gpt-{self.arch}-{self.tokenizer}"


PRESETS = {
    "tiny": dict(
        size="tiny",
        seq_len=64,
        batch_size=8,
        max_steps=30,
        warmup_steps=5,
        eval_interval=10,
        eval_iters=2,
        dropout=0.0,
    ),
    "cpu": dict(),
    "gpu": dict(
        size="gpu",
        seq_len=1024,
        batch_size=32,
        max_steps=5000,
        lr=6e-4,
        min_lr=6e-5,
        warmup_steps=200,
        eval_interval=250,
        eval_iters=50,
    ),
}


def make_train_config(preset: str = "cpu", **overrides) -> TrainConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[preset], **overrides})


def data_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.data_dir) if cfg.data_dir else runs_root() / "week1" / f"data-{cfg.tokenizer}"


def load_tokens(folder: Path, split: str) -> torch.Tensor:
    path = folder / f"{split}.bin"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; run python -m week1_gpt_kvcache.prepare first"
        )
    return torch.from_numpy(np.fromfile(path, dtype=np.uint16).astype(np.int64))


def get_batch(tokens: torch.Tensor, seq_len: int, batch_size: int, gen: torch.Generator):
    """Random windows: x = tokens[i : i+T], y = tokens[i+1 : i+T+1]. Both (B, T)."""
    starts = torch.randint(len(tokens) - seq_len - 1, (batch_size,), generator=gen)
    x = torch.stack([tokens[s : s + seq_len] for s in starts])
    y = torch.stack([tokens[s + 1 : s + seq_len + 1] for s in starts])
    return x, y


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to lr, then cosine decay to min_lr at max_steps."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.max_steps - cfg.warmup_steps))
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def make_optimizer(model: GPT, cfg: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices only: not on norms, biases (1-D) or embeddings."""
    decay = [
        p for n, p in model.named_parameters() if p.dim() >= 2 and "wte" not in n and "wpe" not in n
    ]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "wte" in n or "wpe" in n]
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95))


@torch.no_grad()
def estimate_loss(model, tokens: torch.Tensor, cfg: TrainConfig, device, autocast) -> float:
    """Mean loss over eval_iters fixed batches (the same windows every time: comparable)."""
    model.eval()
    gen = torch.Generator().manual_seed(12345)
    losses = []
    for _ in range(cfg.eval_iters):
        x, y = get_batch(tokens, cfg.seq_len, cfg.batch_size, gen)
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        losses.append(loss.item())
    model.train()
    return float(np.mean(losses))


def bigram_val_loss(train: torch.Tensor, val: torch.Tensor, vocab_size: int) -> float:
    """The baseline: the best model that sees only the previous token."""
    model = BigramLM.from_counts(train, vocab_size)
    _, loss = model(val[:-1].unsqueeze(0), val[1:].unsqueeze(0))
    return loss.item()


def load_model_and_tokenizer(checkpoint: Path | str | None, device: torch.device | str = "cpu"):
    """Rebuild the model from a checkpoint's own config, and its tokenizer (stored beside it)."""
    path = (
        Path(checkpoint)
        if checkpoint
        else runs_root() / "week1" / "gpt-llama-bpe" / "checkpoint.pt"
    )
    state = load_checkpoint(path)
    if "model_config" not in state:
        raise CheckpointError(f"checkpoint {path} is not a week 1 GPT checkpoint (no model_config)")
    model = GPT(GPTConfig(**state["model_config"]))
    model.load_state_dict(state["model"])
    return model.to(device).eval(), load_tokenizer(path.parent / "tokenizer.json")


def check_resumable(state: dict, model_cfg: GPTConfig, cfg: TrainConfig, path: Path) -> None:
    saved = state.get("model_config")
    if saved is None:
        raise CheckpointError(f"checkpoint {path} is not a week 1 GPT checkpoint (no model_config)")
    if saved != model_cfg.to_dict():
        diff = {k: (saved.get(k), v) for k, v in model_cfg.to_dict().items() if saved.get(k) != v}
        raise CheckpointError(
            f"checkpoint {path} was trained with a different model ({saved['arch']} preset); "
            f"(checkpoint, requested) differ in {diff}. Resume with the same --arch/--size, or use a "
            "new --run-name"
        )
    if state["train_config"]["max_steps"] != cfg.max_steps:
        raise CheckpointError(
            f"checkpoint {path} was trained for max_steps="
            f"{state['train_config']['max_steps']}; resume with the same --max-steps"
        )


def main(cfg: TrainConfig) -> dict:
    device = pick_device(cfg.device)
    dtype = pick_dtype(device, cfg.dtype)
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    folder = data_dir(cfg)
    tok = load_tokenizer(folder / "tokenizer.json")
    meta = read_json(folder / "meta.json")
    train_tokens, val_tokens = load_tokens(folder, "train"), load_tokens(folder, "val")
    model_cfg = make_config(cfg.arch, cfg.size, vocab_size=tok.vocab_size, dropout=cfg.dropout)
    if cfg.seq_len > model_cfg.block_size:
        raise ValueError(
            f"seq_len={cfg.seq_len} exceeds the model's block_size={model_cfg.block_size}"
        )
    if len(val_tokens) <= cfg.seq_len + 1:
        raise ValueError(
            f"validation split has {len(val_tokens)} tokens, fewer than seq_len={cfg.seq_len}+2; "
            "use a larger corpus or a smaller --seq-len"
        )

    out = run_dir("week1", cfg.run_name)
    ckpt_path = out / "checkpoint.pt"
    shutil.copyfile(folder / "tokenizer.json", out / "tokenizer.json")
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    optimizer = make_optimizer(model, cfg)
    step, best_val, train_seconds = 0, math.inf, 0.0
    metrics = MetricsLogger(out / "metrics.jsonl", append=cfg.resume)
    if cfg.resume:
        state = load_checkpoint(ckpt_path, map_location=device)
        check_resumable(state, model_cfg, cfg, ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, best_val, train_seconds = state["step"], state["best_val"], state["train_seconds"]
        metrics.truncate_after("step", step)
        log.info("resumed %s at step %d", ckpt_path, step)

    log.info(
        "%s model: %.2fM parameters, %d train / %d val tokens, device %s, dtype %s",
        cfg.arch,
        model.num_params() / 1e6,
        len(train_tokens),
        len(val_tokens),
        device,
        dtype,
    )
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=step, desc="train", leave=False)
    t0 = time.perf_counter()
    while step < cfg.max_steps:
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # resumable data order
        torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout
        x, y = get_batch(train_tokens, cfg.seq_len, cfg.batch_size, gen)
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        with autocast():
            _, loss = model(x.to(device), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % 10 == 0:
            metrics.log(
                step=step,
                train_loss=loss.item(),
                lr=lr_at(step - 1, cfg),
                grad_norm=grad_norm.item(),
            )
        if step % cfg.eval_interval == 0 or step == cfg.max_steps:
            train_seconds += time.perf_counter() - t0
            val = estimate_loss(model, val_tokens, cfg, device, autocast)
            metrics.log(step=step, val_loss=val, elapsed_s=round(train_seconds, 1))
            tqdm.write(
                f"step {step}: train {loss.item():.3f}  val {val:.3f}  ({train_seconds:.0f}s)"
            )
            best_val = min(best_val, val)
            save_checkpoint(
                ckpt_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "step": step,
                    "model_config": model_cfg.to_dict(),
                    "train_config": asdict(cfg),
                    "best_val": best_val,
                    "val_loss": val,
                    "train_seconds": train_seconds,
                },
            )
            t0 = time.perf_counter()
    bar.close()
    return finish(
        model,
        tok,
        cfg,
        model_cfg,
        meta,
        train_tokens,
        val_tokens,
        metrics,
        out,
        train_seconds,
        device,
    )


def finish(
    model, tok, cfg, model_cfg, meta, train_tokens, val_tokens, metrics, out, train_seconds, device
):
    rows = metrics.read()
    final_val = [r["val_loss"] for r in rows if "val_loss" in r][-1]
    bigram = bigram_val_loss(train_tokens, val_tokens, tok.vocab_size)
    plot_curves(
        rows,
        "step",
        ["train_loss", "val_loss"],
        out / "loss_curve.png",
        title=f"{cfg.arch} on {meta['source']} (bigram val {bigram:.2f})",
        ylabel="cross-entropy",
    )
    prompts = ["The ", "\n", "def "] if tok.kind == "bpe" else ["T", "\n", "d"]
    params = SamplingParams(
        max_tokens=min(120, model_cfg.block_size - 4),
        temperature=0.8,
        top_k=50,
        seed=cfg.seed,
        stop_token_ids=tuple(t for t in [tok.eos_id] if t is not None),
    )
    gen = generate(model, [tok.encode(p) for p in prompts], params)
    samples = [p + tok.decode(t) for p, t in zip(prompts, gen.tokens)]
    (out / "samples.txt").write_text("\n\n-----\n\n".join(samples), encoding="utf-8")
    results = {
        "arch": cfg.arch,
        "size": cfg.size,
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "params": model.num_params(),
        "params_non_embedding": model.num_params(non_embedding=True),
        "corpus": meta["source"],
        "train_tokens": len(train_tokens),
        "val_tokens": len(val_tokens),
        "steps": cfg.max_steps,
        "tokens_seen": cfg.max_steps * cfg.batch_size * cfg.seq_len,
        "final_val_loss": final_val,
        "bigram_val_loss": bigram,
        "train_seconds": round(train_seconds, 1),
        "samples": samples,
        "model_config": model_cfg.to_dict(),
        "train_config": asdict(cfg),
        "plots": ["loss_curve.png"],
        "environment": environment(device),
    }
    save_results("week1", cfg.run_name, results)
    log.info(
        "val loss %.3f (bigram baseline %.3f) after %d steps, %.0fs",
        final_val,
        bigram,
        cfg.max_steps,
        train_seconds,
    )
    return results


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", choices=PRESETS, default="cpu")
    p.add_argument("--arch", choices=ARCHS)
    p.add_argument("--size", choices=SIZES)
    p.add_argument("--tokenizer", choices=["bpe", "char"])
    p.add_argument("--data-dir")
    p.add_argument("--seq-len", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--max-steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--dropout", type=float)
    p.add_argument("--eval-interval", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--run-name")
    p.add_argument("--resume", action="store_true", default=None)
    args = {k: v for k, v in vars(p.parse_args(argv)).items() if v is not None}
    return make_train_config(args.pop("preset"), **args)


if __name__ == "__main__":
    main(parse_args())
