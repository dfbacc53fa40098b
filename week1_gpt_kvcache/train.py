"""Train the GPT on the prepared corpus.

    python -m week1_gpt_kvcache.prepare                  # once: corpus + tokenizer + token ids
    python -m week1_gpt_kvcache.train                    # llama preset, BPE
    python -m week1_gpt_kvcache.train --arch gpt2 --max-steps 300
    python -m week1_gpt_kvcache.train --resume           # continue a killed run

AdamW (no weight decay on norms/biases/embeddings), linear warmup then cosine decay, gradient
clipping, validation loss every `eval_interval` steps, atomic checkpoints (the best and the
last). Writes runs/week1/<run-name>/: checkpoint.pt, tokenizer.json, metrics.jsonl,
loss_curve.png, samples.txt, results.json. Presets: `tiny` (tests), `cpu` (the default run),
`gpu` (real hardware); a flag overrides its preset.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from common.checkpoint import load_checkpoint, save_checkpoint
from common.cli import parse
from common.device import pick_device, pick_dtype
from common.plots import plot_curves
from common.results import MetricsLogger, get_logger, read_json, run_dir, save_results
from common.timing import environment
from week1_gpt_kvcache.checkpoint import check_resumable
from week1_gpt_kvcache.corpus import TokenizerKind, data_dir, get_batch, load_tokens
from week1_gpt_kvcache.generate import SamplingParams, generate
from week1_gpt_kvcache.model import ARCHS, GPT, SIZES, Arch, GPTConfig, make_config
from week1_gpt_kvcache.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer
from week1_gpt_kvcache.training import (
    autocast_for,
    bigram_val_loss,
    estimate_loss,
    lr_at,
    make_optimizer,
)

log = get_logger("week1.train")


@dataclass
class TrainConfig:
    """Train a GPT (gpt2 or llama preset) on runs/week1/data-<tokenizer>."""

    arch: Arch = "llama"  # model family
    size: str = "cpu"  # model dimensions: tiny | cpu | gpu | draft (see model.SIZES)
    n_kv_head: int | None = None  # K/V heads (GQA); none = the size's; 1 = multi-query attention
    tokenizer: TokenizerKind = "bpe"  # which prepared data: runs/week1/data-<tokenizer>
    data_dir: str | None = None  # read the data from this folder instead
    seq_len: int = 256  # training window in tokens (<= the model's block_size)
    batch_size: int = 16  # windows per step
    max_steps: int = 400  # optimizer steps in the whole run
    lr: float = 2e-3  # peak learning rate
    min_lr: float = 1e-4  # learning rate at the end of the cosine
    warmup_steps: int = 50  # linear warmup from 0 to lr
    weight_decay: float = 0.1  # AdamW decay of the weight matrices
    grad_clip: float = 1.0  # clip the gradient norm to this
    dropout: float = 0.2  # on attention and MLP outputs while training
    eval_interval: int = 50  # steps between validation losses (and checkpoints)
    eval_iters: int = 20  # batches per validation loss
    seed: int = 0  # model init, data order and dropout
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    dtype: str = "auto"  # auto = bf16 autocast on GPUs that support it, fp32 on CPU
    run_name: str | None = None  # folder under runs/week1/; None = gpt-<arch>-<tokenizer>
    resume: bool = False  # continue from the run's checkpoint.pt

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"arch={self.arch!r}: use one of {', '.join(ARCHS)}")
        if self.size not in SIZES:
            raise ValueError(f"size={self.size!r}: use one of {', '.join(SIZES)}")
        if self.n_kv_head is not None and (isinstance(self.n_kv_head, bool) or self.n_kv_head < 1):
            raise ValueError(f"n_kv_head={self.n_kv_head!r} must be an integer >= 1 (or none)")
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
    """A preset's config with some fields changed (what tests and notebooks use)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[preset], **overrides})


@dataclass
class TrainingData:
    folder: Path
    tok: CharTokenizer | BPETokenizer
    meta: dict  # what prepare wrote: source, sizes
    train: torch.Tensor  # (N_train,) token ids
    val: torch.Tensor  # (N_val,) token ids


@dataclass
class Progress:
    step: int = 0
    best_val: float = math.inf
    train_seconds: float = 0.0  # time in training steps (not evaluation), across resumes


def load_data(cfg: TrainConfig) -> TrainingData:
    folder = data_dir(cfg.tokenizer, cfg.data_dir)
    return TrainingData(
        folder,
        load_tokenizer(folder / "tokenizer.json"),
        read_json(folder / "meta.json"),
        load_tokens(folder, "train"),
        load_tokens(folder, "val"),
    )


def model_config_for(cfg: TrainConfig, data: TrainingData) -> GPTConfig:
    """The model of the preset, sized to the tokenizer; refuses windows that do not fit."""
    heads = {} if cfg.n_kv_head is None else {"n_kv_head": cfg.n_kv_head}
    model_cfg = make_config(
        cfg.arch, cfg.size, vocab_size=data.tok.vocab_size, dropout=cfg.dropout, **heads
    )
    if cfg.seq_len > model_cfg.block_size:
        raise ValueError(
            f"seq_len={cfg.seq_len} exceeds the model's block_size={model_cfg.block_size}"
        )
    if len(data.val) <= cfg.seq_len + 1:
        raise ValueError(
            f"validation split has {len(data.val)} tokens, fewer than seq_len={cfg.seq_len}+2; "
            "use a larger corpus or a smaller --seq-len"
        )
    return model_cfg


def schedule(step: int, cfg: TrainConfig) -> float:
    return lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.max_steps)


def resume(path: Path, model: GPT, optimizer, cfg: TrainConfig, device) -> Progress:
    """Load model and optimizer state from `path`; the progress to continue from."""
    state = load_checkpoint(path, map_location=device)
    check_resumable(state, model.cfg, cfg.max_steps, path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    log.info("resumed %s at step %d", path, state["step"])
    return Progress(state["step"], state["best_val"], state["train_seconds"])


def train_step(model: GPT, optimizer, tokens, cfg: TrainConfig, step: int, autocast):
    """One optimizer step on a batch drawn from `step` alone (so a resumed run sees the same)."""
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)  # data order
    torch.manual_seed(cfg.seed * 1_000_003 + step)  # dropout
    x, y = get_batch(tokens, cfg.seq_len, cfg.batch_size, gen)
    device = model.lm_head.weight.device
    for group in optimizer.param_groups:
        group["lr"] = schedule(step, cfg)
    with autocast():
        _, loss = model(x.to(device), y.to(device))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return loss.item(), grad_norm.item()


def evaluate_and_save(model, optimizer, cfg, val_tokens, progress, metrics, path, autocast, loss):
    """Validation loss, a metrics row, a log line and an atomic checkpoint."""
    val = estimate_loss(model, val_tokens, cfg.seq_len, cfg.batch_size, cfg.eval_iters, autocast)
    metrics.log(step=progress.step, val_loss=val, elapsed_s=round(progress.train_seconds, 1))
    tqdm.write(
        f"step {progress.step}: train {loss:.3f}  val {val:.3f}  ({progress.train_seconds:.0f}s)"
    )
    progress.best_val = min(progress.best_val, val)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "step": progress.step,
        "model_config": model.cfg.to_dict(),
        "train_config": asdict(cfg),
        "best_val": progress.best_val,
        "val_loss": val,
        "train_seconds": progress.train_seconds,
    }
    save_checkpoint(path, state)


def main(cfg: TrainConfig) -> dict:
    device = pick_device(cfg.device)
    dtype = pick_dtype(device, cfg.dtype)
    autocast = autocast_for(device, dtype)
    data = load_data(cfg)
    model_cfg = model_config_for(cfg, data)
    out = run_dir("week1", cfg.run_name)
    ckpt_path = out / "checkpoint.pt"
    shutil.copyfile(data.folder / "tokenizer.json", out / "tokenizer.json")
    torch.manual_seed(cfg.seed)
    model = GPT(model_cfg).to(device)
    optimizer = make_optimizer(model, cfg.lr, cfg.weight_decay)
    metrics = MetricsLogger(out / "metrics.jsonl", append=cfg.resume)
    progress = Progress()
    if cfg.resume:
        progress = resume(ckpt_path, model, optimizer, cfg, device)
        metrics.truncate_after("step", progress.step)
    log.info(
        "%s model: %.2fM parameters, %d train / %d val tokens, device %s, dtype %s",
        cfg.arch,
        model.num_params() / 1e6,
        len(data.train),
        len(data.val),
        device,
        dtype,
    )
    model.train()
    bar = tqdm(total=cfg.max_steps, initial=progress.step, desc="train", leave=False)
    t0 = time.perf_counter()
    while progress.step < cfg.max_steps:
        loss, grad_norm = train_step(model, optimizer, data.train, cfg, progress.step, autocast)
        progress.step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}")
        if progress.step % 10 == 0:
            lr = schedule(progress.step - 1, cfg)
            metrics.log(step=progress.step, train_loss=loss, lr=lr, grad_norm=grad_norm)
        if progress.step % cfg.eval_interval == 0 or progress.step == cfg.max_steps:
            progress.train_seconds += time.perf_counter() - t0
            args = (cfg, data.val, progress, metrics, ckpt_path, autocast, loss)
            evaluate_and_save(model, optimizer, *args)
            t0 = time.perf_counter()
    bar.close()
    return finish(model, data, cfg, metrics, out, progress.train_seconds, device)


def write_samples(model: GPT, tok, seed: int, path: Path) -> list[str]:
    """Three sampled continuations (temperature 0.8, top-k 50) into samples.txt."""
    prompts = ["The ", "\n", "def "] if tok.kind == "bpe" else ["T", "\n", "d"]
    params = SamplingParams(
        max_tokens=min(120, model.cfg.block_size - 4),
        temperature=0.8,
        top_k=50,
        seed=seed,
        stop_token_ids=tuple(t for t in [tok.eos_id] if t is not None),
    )
    gen = generate(model, [tok.encode(p) for p in prompts], params)
    samples = [p + tok.decode(t) for p, t in zip(prompts, gen.tokens)]
    path.write_text("\n\n-----\n\n".join(samples), encoding="utf-8")
    return samples


def finish(model, data, cfg, metrics, out, train_seconds, device) -> dict:
    """The loss plot, samples and results.json of a finished run."""
    rows = metrics.read()
    final_val = [r["val_loss"] for r in rows if "val_loss" in r][-1]
    bigram = bigram_val_loss(data.train, data.val, data.tok.vocab_size)
    plot_curves(
        rows,
        "step",
        ["train_loss", "val_loss"],
        out / "loss_curve.png",
        title=f"{cfg.arch} on {data.meta['source']} (bigram val {bigram:.2f})",
        ylabel="cross-entropy",
    )
    samples = write_samples(model, data.tok, cfg.seed, out / "samples.txt")
    results = {
        "arch": cfg.arch,
        "size": cfg.size,
        "tokenizer": data.tok.kind,
        "vocab_size": data.tok.vocab_size,
        "params": model.num_params(),
        "params_non_embedding": model.num_params(non_embedding=True),
        "corpus": data.meta["source"],
        "train_tokens": len(data.train),
        "val_tokens": len(data.val),
        "steps": cfg.max_steps,
        "tokens_seen": cfg.max_steps * cfg.batch_size * cfg.seq_len,
        "final_val_loss": final_val,
        "bigram_val_loss": bigram,
        "train_seconds": round(train_seconds, 1),
        "samples": samples,
        "model_config": model.cfg.to_dict(),
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


if __name__ == "__main__":
    main(parse(TrainConfig, presets=PRESETS, default_preset="cpu", description=__doc__))
