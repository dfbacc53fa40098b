"""int8 quantization: the hand quantizer's error bounds, its layers, and the full comparison."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from week0_pytorch import int8, quantize, train
from week0_pytorch.models import CNN


@pytest.mark.parametrize("shape", [(16, 32), (8, 3, 3, 3)])
def test_per_channel_error_is_at_most_half_a_step(shape):
    w = torch.randn(shape) * torch.logspace(-3, 1, shape[0]).view((-1,) + (1,) * (len(shape) - 1))
    qw, scale = int8.quantize_per_channel(w)
    assert qw.dtype == torch.int8 and scale.shape == (shape[0],)
    assert qw.abs().max() <= 127
    err = (int8.dequantize_per_channel(qw, scale) - w).abs().flatten(1).amax(1)
    assert torch.all(err <= scale / 2 + 1e-7)
    # the largest-magnitude weight of each channel maps to ±127 exactly
    assert torch.equal(qw.flatten(1).abs().amax(1), torch.full((shape[0],), 127, dtype=torch.int8))


def test_zero_channel_and_symmetry():
    w = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    qw, scale = int8.quantize_per_channel(w)
    assert torch.equal(qw[0], torch.zeros(2, dtype=torch.int8)) and torch.isfinite(scale).all()
    assert qw[1].tolist() == [127, -127]


def test_int8_layers_match_float_layers():
    torch.manual_seed(0)
    lin, conv = nn.Linear(64, 32), nn.Conv2d(3, 8, 3, padding=1)
    x, img = torch.randn(4, 64), torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(int8.Int8Linear(lin)(x), lin(x), atol=0.02, rtol=0.02)
    torch.testing.assert_close(int8.Int8Conv2d(conv)(img), conv(img), atol=0.02, rtol=0.02)


def test_quantized_model_weights_take_under_30_percent():
    model = CNN()
    hand = int8.quantize_model_by_hand(model)
    assert not any(isinstance(m, nn.Linear | nn.Conv2d) for m in hand.modules())
    assert int8.layer_weight_bytes(hand) <= 0.30 * int8.layer_weight_bytes(model)
    assert int8.state_dict_bytes(hand) <= 0.30 * int8.state_dict_bytes(model)
    ao = int8.quantize_model_torchao(model)
    assert int8.layer_weight_bytes(ao) < 0.5 * int8.layer_weight_bytes(model)  # convs stay fp32


def test_full_comparison_on_a_trained_model(runs_dir):
    train.main(train.make_config("tiny", epochs=2, limit_train=512))
    res = quantize.main(quantize.QuantConfig(repeats=2, warmup=1))
    v = res["variants"]
    assert set(v) == {"fp32", "torchao_int8", "hand_int8"}
    for name in ("torchao_int8", "hand_int8"):
        assert v[name]["prediction_agreement"] >= 0.97
        assert abs(v[name]["accuracy_delta_points"]) <= 2.0
        assert v[name]["latency_ms_median"] > 0
    assert v["hand_int8"]["layer_weight_ratio"] <= 0.30
    assert (runs_dir / "week0" / "quantize" / "quantization.png").exists()


def test_quantize_without_checkpoint_names_the_path():
    with pytest.raises(Exception, match="mnist-none.*does not exist"):
        quantize.main(quantize.QuantConfig(run_name="mnist-none"))
