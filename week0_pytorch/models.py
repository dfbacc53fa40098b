"""Two MNIST classifiers: an MLP (pixels as a flat vector) and a small CNN (pixels as an image)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """784 -> 256 -> 128 -> 10. Sees the image as an unordered bag of 784 numbers."""

    def __init__(self, hidden: tuple[int, int] = (256, 128), dropout: float = 0.1):
        super().__init__()
        h1, h2 = hidden
        self.fc1 = nn.Linear(28 * 28, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, 10)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28)
        x = x.flatten(1)  # (B, 784)
        x = self.drop(F.relu(self.fc1(x)))  # (B, 256)
        x = self.drop(F.relu(self.fc2(x)))  # (B, 128)
        return self.fc3(x)  # (B, 10) logits


class CNN(nn.Module):
    """Two conv blocks then a classifier. Convolutions share weights across positions, so
    a stroke is recognised wherever it is: far fewer parameters per unit of accuracy."""

    def __init__(
        self, channels: tuple[int, int] = (32, 64), hidden: int = 128, dropout: float = 0.25
    ):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, padding=1)
        self.fc1 = nn.Linear(c2 * 7 * 7, hidden)
        self.fc2 = nn.Linear(hidden, 10)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, 1, 28, 28)
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)  # (B, 32, 14, 14)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, 7, 7)
        x = self.drop(x.flatten(1))  # (B, 3136)
        x = self.drop(F.relu(self.fc1(x)))  # (B, 128)
        return self.fc2(x)  # (B, 10) logits


MODELS = {"mlp": MLP, "cnn": CNN}


def build_model(name: str) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; use one of {', '.join(MODELS)}")
    return MODELS[name]()


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
