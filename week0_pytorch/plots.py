"""Week 0 pictures: digit grids with predictions, and the confusion matrix."""

from __future__ import annotations

from pathlib import Path

import torch

from common.plots import plt, save


def plot_digit_grid(
    images: torch.Tensor,
    pred: torch.Tensor,
    true: torch.Tensor,
    path: Path | str,
    title: str = "",
    cols: int = 10,
) -> Path:
    """images: (N, 28, 28) uint8. Titles 'pred (true)'; wrong ones in red."""
    n = max(len(images), 1)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.0, rows * 1.15 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i].numpy(), cmap="gray_r")
            ok = int(pred[i]) == int(true[i])
            ax.set_title(
                f"{int(pred[i])}" + ("" if ok else f" ({int(true[i])})"),
                color="black" if ok else "red",
                fontsize=9,
            )
    fig.suptitle(title)
    return save(fig, path)


def plot_confusion(cm: torch.Tensor, path: Path | str) -> Path:
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.imshow(cm.numpy(), cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            v = int(cm[i, j])
            if v:
                ax.text(
                    j,
                    i,
                    str(v),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if v > cm.max() / 2 else "black",
                )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(10))
    ax.set_yticks(range(10))
    ax.set_title("Confusion matrix (test)")
    return save(fig, path)
