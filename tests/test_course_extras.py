"""The course's extras: a reproducible default corpus, the exercises' flags, the worked
solutions and the tensor-parallel concept demo (each checked against its plain reference)."""

from __future__ import annotations

import math
import socket
import types

import pytest
import torch

from docs.concepts import tp_demo
from week0_pytorch.micrograd.engine import Value
from week0_pytorch.solutions import micrograd_ops, per_tensor_int8
from week1_gpt_kvcache import corpus, prepare, train
from week1_gpt_kvcache.model import SIZES
from week1_gpt_kvcache.solutions import mqa_memory


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or download fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the default path tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(corpus.urllib.request, "urlopen", refuse)
    monkeypatch.setattr(corpus, "download_shakespeare", refuse)


def test_default_corpus_is_pinned_and_offline(no_network, tmp_path):
    assert prepare.PrepareConfig().source == "pydoc"
    text, source = corpus.load_corpus()
    assert source == "pydoc_data.topics" and text == corpus.pydoc_corpus()
    meta = prepare.main(prepare.PrepareConfig(tokenizer="char", out_dir=str(tmp_path)))
    assert meta["source"] == "pydoc_data.topics"
    with pytest.raises(AssertionError, match="network"):  # the opt-in does go online
        corpus.load_corpus("shakespeare")


def test_n_kv_head_flag_reaches_the_model():
    data = types.SimpleNamespace(tok=types.SimpleNamespace(vocab_size=300), val=torch.zeros(999))
    default = train.model_config_for(train.make_train_config("cpu"), data)
    assert default.n_kv_head == SIZES["cpu"]["n_kv_head"]
    mqa = train.model_config_for(train.make_train_config("cpu", n_kv_head=1), data)
    assert mqa.n_kv_head == 1 and mqa.n_head == default.n_head
    for bad in (0, -2, True):
        with pytest.raises(ValueError, match="n_kv_head"):
            train.make_train_config("cpu", n_kv_head=bad)
    with pytest.raises(ValueError, match="multiple of n_kv_head=3"):
        train.model_config_for(train.make_train_config("cpu", n_kv_head=3), data)
    cfg = train.parse(train.TrainConfig, ["--n-kv-head", "1"])  # one flag per field
    assert cfg.n_kv_head == 1


def test_per_tensor_int8_hurts_small_channels_most():
    w = per_tensor_int8.skewed_weight()
    err = per_tensor_int8.compare(w)
    assert err["per_tensor"][0] > 10 * err["per_channel"][0]  # the smallest row
    assert torch.all(err["per_channel"] <= err["per_tensor"] + 1e-6)
    q, scale = per_tensor_int8.quantize_per_tensor(w)
    assert q.dtype == torch.int8 and (w - q.float() * scale).abs().max() <= scale / 2 + 1e-7


@pytest.mark.parametrize("x", [-3.0, -0.2, 0.4, 2.5])
def test_micrograd_log_sigmoid_match_torch(x):
    v = Value(x)
    y = micrograd_ops.log(micrograd_ops.sigmoid(v) * 3.0)
    y.backward()
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    ty = torch.log(torch.sigmoid(t) * 3.0)
    ty.backward()
    assert math.isclose(y.data, ty.item(), rel_tol=1e-12)
    assert math.isclose(v.grad, t.grad.item(), rel_tol=1e-9)
    with pytest.raises(ValueError, match="positive"):
        micrograd_ops.log(Value(0.0))


def test_mqa_memory_is_linear_in_kv_heads():
    rows = mqa_memory.main()
    assert rows[2] == (2.0, 32.0)  # the week 1 README's table, our GQA model
    assert rows[1][1] * 4 == rows[4][1]


@pytest.mark.timeout(120)
def test_tensor_parallel_mlp_equals_single_process():
    outputs = tp_demo.run_tensor_parallel(start_method="fork")  # fork: no re-import of torch
    reference = tp_demo.mlp(*tp_demo.make_weights())
    assert len(outputs) == 2
    for y in outputs:
        torch.testing.assert_close(y, reference, rtol=1e-12, atol=1e-12)
    x, a, b = tp_demo.make_weights()
    half = a.shape[1] // 2  # the split itself is what makes it work: one half alone is wrong
    assert not torch.allclose(torch.nn.functional.gelu(x @ a[:, :half]) @ b[:half], reference)
