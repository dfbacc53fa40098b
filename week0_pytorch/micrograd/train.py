"""Train a micrograd MLP on two interleaving half-moons and plot its decision boundary.

    python -m week0_pytorch.micrograd.train
    python -m week0_pytorch.micrograd.train --steps 50 --n-samples 60

Writes runs/week0/micrograd/: results.json, loss.png, decision_boundary.png.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from tqdm import tqdm

from common.cli import parse
from common.plots import plot_curves, plt, save
from common.results import get_logger, run_dir, save_results
from week0_pytorch.micrograd.engine import Value
from week0_pytorch.micrograd.moons import make_moons
from week0_pytorch.micrograd.nn import MLP

log = get_logger("week0.micrograd")


@dataclass
class MoonsConfig:
    """Train a micrograd MLP on two moons with full-batch gradient descent."""

    n_samples: int = 100  # points in the data set, half per class
    noise: float = 0.1  # standard deviation of the Gaussian noise on each point
    hidden: tuple[int, ...] = (16, 16)  # widths of the hidden layers
    steps: int = 60  # gradient-descent steps on the full batch
    lr: float = 1.0  # learning rate at the start; decays linearly to a tenth of it
    alpha: float = 1e-4  # L2 regularization strength
    seed: int = 0  # data noise, shuffle and initial weights
    plot_resolution: int = 40  # decision-boundary grid is resolution x resolution

    def __post_init__(self) -> None:
        if self.steps < 1 or self.n_samples < 2:
            raise ValueError(
                f"steps must be >= 1 and n_samples >= 2, got {self.steps}, {self.n_samples}"
            )


def loss_and_accuracy(model: MLP, xs, ys, alpha: float) -> tuple[Value, float]:
    """SVM max-margin loss on labels ±1, plus L2; accuracy of sign(score)."""
    scores = [model(list(x))[0] for x in xs]
    signed = [2 * y - 1 for y in ys]  # {0, 1} -> {-1, +1}
    margins = [(1 + -yi * s).relu() for yi, s in zip(signed, scores)]
    data_loss = sum(margins, Value(0.0)) * (1.0 / len(margins))
    reg = alpha * sum((p * p for p in model.parameters()), Value(0.0))
    acc = sum((s.data > 0) == (yi > 0) for yi, s in zip(signed, scores)) / len(ys)
    return data_loss + reg, acc


def main(cfg: MoonsConfig) -> dict:
    xs, ys = make_moons(cfg.n_samples, cfg.noise, cfg.seed)
    model = MLP(2, list(cfg.hidden) + [1], seed=cfg.seed)
    rows = []
    t0 = time.perf_counter()
    for step in (bar := tqdm(range(cfg.steps), desc="micrograd", leave=False)):
        loss, acc = loss_and_accuracy(model, xs, ys, cfg.alpha)
        model.zero_grad()
        loss.backward()
        lr = cfg.lr * (1 - 0.9 * step / cfg.steps)
        for p in model.parameters():
            p.data -= lr * p.grad
        rows.append({"step": step, "loss": loss.data, "accuracy": acc})
        bar.set_postfix(loss=f"{loss.data:.3f}", acc=f"{acc:.0%}")
    _, final_acc = loss_and_accuracy(model, xs, ys, cfg.alpha)
    seconds = time.perf_counter() - t0
    log.info(
        "micrograd MLP: train accuracy %.1f%% after %d steps (%.1fs)",
        100 * final_acc,
        cfg.steps,
        seconds,
    )

    out = run_dir("week0", "micrograd")
    plot_curves(rows, "step", ["loss", "accuracy"], out / "loss.png", title="micrograd on moons")
    plot_boundary(model, xs, ys, cfg.plot_resolution, out / "decision_boundary.png")
    results = {
        "train_accuracy": final_acc,
        "final_loss": rows[-1]["loss"],
        "seconds": round(seconds, 2),
        "n_params": len(model.parameters()),
        "config": asdict(cfg),
        "plots": ["loss.png", "decision_boundary.png"],
    }
    save_results("week0", "micrograd", results)
    return results


def plot_boundary(model: MLP, xs, ys, res: int, path):
    x0s, x1s = [p[0] for p in xs], [p[1] for p in xs]
    lo0, hi0, lo1, hi1 = min(x0s) - 0.5, max(x0s) + 0.5, min(x1s) - 0.5, max(x1s) + 0.5
    g0 = [lo0 + (hi0 - lo0) * i / (res - 1) for i in range(res)]
    g1 = [lo1 + (hi1 - lo1) * j / (res - 1) for j in range(res)]
    z = [[1.0 if model([a, b])[0].data > 0 else 0.0 for a in g0] for b in g1]
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.contourf(g0, g1, z, levels=[-0.5, 0.5, 1.5], colors=["#9ecae1", "#fdae6b"], alpha=0.6)
    ax.scatter(
        x0s, x1s, c=["#08519c" if y == 0 else "#a63603" for y in ys], s=14, edgecolors="white"
    )
    ax.set_title("micrograd MLP decision boundary")
    return save(fig, path)


if __name__ == "__main__":
    main(parse(MoonsConfig, description=__doc__))
