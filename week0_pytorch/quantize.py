"""Post-training int8 quantization of the trained MNIST model, two ways, side by side.

    python -m week0_pytorch.quantize                  # quantizes runs/week0/mnist-cnn/checkpoint.pt

1. By hand: per-output-channel symmetric int8 weights. For each output channel c,
       scale[c] = max|w[c]| / 127,   q = clamp(round(w / scale), -127, 127),   w ≈ q * scale.
   Weights are stored as int8 (+ one fp32 scale per channel) and dequantized in forward.
2. The library way: torchao's `Int8DynamicActivationInt8WeightConfig` (int8 weights, and
   activations quantized on the fly per token), applied with `quantize_`. torchao quantizes
   nn.Linear layers; convolutions stay fp32.

Writes runs/week0/quantize/results.json and a bar chart: accuracy, bytes on disk, and
median CPU latency per batch of 256 for fp32 / torchao int8 / hand int8.
"""

from __future__ import annotations

import argparse
import copy
import io
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from common.checkpoint import load_checkpoint
from common.plots import plt, save
from common.results import get_logger, run_dir, runs_root, save_results
from common.timing import benchmark, environment
from week0_pytorch.data import load_mnist, to_float
from week0_pytorch.models import build_model

log = get_logger("week0.quantize")
QMAX = 127  # symmetric: use [-127, 127] so that +x and -x quantize to +q and -q


def quantize_per_channel(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8: w (C_out, ...) -> (q int8 same shape, scale (C_out,))."""
    w = w.detach().float()
    max_abs = w.abs().flatten(1).amax(dim=1)  # (C_out,)
    scale = (max_abs / QMAX).clamp(min=1e-12)  # an all-zero channel gets a tiny scale, not 0/0
    shape = (-1,) + (1,) * (w.dim() - 1)  # broadcast scale over the other dims
    q = torch.round(w / scale.view(shape)).clamp(-QMAX, QMAX).to(torch.int8)
    return q, scale


def dequantize_per_channel(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return q.float() * scale.view((-1,) + (1,) * (q.dim() - 1))


class Int8Linear(nn.Module):
    """A Linear whose weight lives in int8; forward dequantizes it (weight-only quantization)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        q, scale = quantize_per_channel(linear.weight)
        self.register_buffer("weight_int8", q)  # (out, in) int8
        self.register_buffer("weight_scale", scale)  # (out,) fp32
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, dequantize_per_channel(self.weight_int8, self.weight_scale), self.bias)


class Int8Conv2d(nn.Module):
    """A Conv2d with int8 weights (per output channel), dequantized in forward."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        q, scale = quantize_per_channel(conv.weight)
        self.register_buffer("weight_int8", q)  # (out, in, kh, kw) int8
        self.register_buffer("weight_scale", scale)  # (out,) fp32
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        self.stride, self.padding, self.dilation, self.groups = (
            conv.stride,
            conv.padding,
            conv.dilation,
            conv.groups,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = dequantize_per_channel(self.weight_int8, self.weight_scale)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


def quantize_model_by_hand(model: nn.Module) -> nn.Module:
    """A copy of `model` with every Linear and Conv2d replaced by its int8 version."""
    model = copy.deepcopy(model)
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, Int8Linear(child))
        elif isinstance(child, nn.Conv2d):
            setattr(model, name, Int8Conv2d(child))
        else:
            setattr(model, name, quantize_model_by_hand(child))
    return model


def quantize_model_torchao(model: nn.Module) -> nn.Module:
    """A copy of `model` with torchao's int8 dynamic-activation / int8-weight quantization."""
    logging.getLogger("torchao").setLevel(logging.ERROR)
    from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

    model = copy.deepcopy(model)
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return model


def state_dict_bytes(model: nn.Module) -> int:
    """Size of the saved state_dict: what the model costs on disk."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return len(buf.getbuffer())


def tensor_storage_bytes(t: torch.Tensor) -> int:
    """Bytes of a tensor's data, including the inner tensors of quantized tensor subclasses."""
    if type(t) not in (torch.Tensor, nn.Parameter) and hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(tensor_storage_bytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def layer_weight_bytes(model: nn.Module) -> int:
    """Bytes of the weights (and scales) of the Linear/Conv layers: the part quantization targets."""
    total = 0
    for mod in model.modules():
        if isinstance(mod, nn.Linear | nn.Conv2d):
            total += tensor_storage_bytes(mod.weight)
        elif isinstance(mod, Int8Linear | Int8Conv2d):
            total += tensor_storage_bytes(mod.weight_int8) + tensor_storage_bytes(mod.weight_scale)
    return total


@dataclass
class QuantConfig:
    run_name: str = "mnist-cnn"  # which runs/week0/<run>/checkpoint.pt to quantize
    batch_size: int = 256  # latency is measured per batch of this size
    repeats: int = 30
    warmup: int = 5
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.repeats < 1 or self.warmup < 0:
            raise ValueError(f"batch_size/repeats must be >= 1 and warmup >= 0, got {asdict(self)}")


@torch.no_grad()
def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: QuantConfig) -> dict:
    model.eval()
    logits = torch.cat([model(x[i : i + 512]) for i in range(0, len(x), 512)])
    batch = x[: cfg.batch_size]
    stats = benchmark(lambda: model(batch), warmup=cfg.warmup, repeats=cfg.repeats)
    return {
        "accuracy": (logits.argmax(1) == y).float().mean().item(),
        "disk_bytes": state_dict_bytes(model),
        "layer_weight_bytes": layer_weight_bytes(model),
        "latency_ms_median": stats.median_ms,
        "latency": stats.to_dict(),
        "_logits": logits,
    }


def main(cfg: QuantConfig) -> dict:
    ckpt_path = runs_root() / "week0" / cfg.run_name / "checkpoint.pt"
    state = load_checkpoint(ckpt_path)
    train_cfg = state["config"]
    model = build_model(train_cfg["model"])
    model.load_state_dict(state["model"])
    model.eval()
    data = load_mnist(train_cfg["source"], train_cfg.get("data_dir"), train_cfg["seed"])
    x, y = to_float(data.test_x), data.test_y

    variants = {
        "fp32": model,
        "torchao_int8": quantize_model_torchao(model),
        "hand_int8": quantize_model_by_hand(model),
    }
    rows = {}
    for name, m in variants.items():
        rows[name] = measure(m, x, y, cfg)
        log.info(
            "%-13s acc %.2f%%  disk %8d B  layer weights %8d B  latency %.2f ms / %d",
            name,
            100 * rows[name]["accuracy"],
            rows[name]["disk_bytes"],
            rows[name]["layer_weight_bytes"],
            rows[name]["latency_ms_median"],
            cfg.batch_size,
        )
    ref_logits = rows["fp32"].pop("_logits")
    fp32 = rows["fp32"]
    for name in ("torchao_int8", "hand_int8"):
        r = rows[name]
        logits = r.pop("_logits")
        r["accuracy_delta_points"] = 100 * (r["accuracy"] - fp32["accuracy"])
        r["disk_ratio"] = r["disk_bytes"] / fp32["disk_bytes"]
        r["layer_weight_ratio"] = r["layer_weight_bytes"] / fp32["layer_weight_bytes"]
        r["latency_ratio"] = r["latency_ms_median"] / fp32["latency_ms_median"]
        r["prediction_agreement"] = (logits.argmax(1) == ref_logits.argmax(1)).float().mean().item()
    # torchao leaves convolutions in fp32: say which layers each variant quantized.
    rows["torchao_int8"]["quantized_layers"] = "Linear"
    rows["hand_int8"]["quantized_layers"] = "Linear+Conv2d"

    out = run_dir("week0", "quantize")
    plot_quant(rows, out / "quantization.png")
    results = {
        "model": train_cfg["model"],
        "checkpoint": str(ckpt_path),
        "data": data.describe(),
        "batch_size": cfg.batch_size,
        "variants": rows,
        "config": asdict(cfg),
        "plots": ["quantization.png"],
        "environment": environment("cpu"),
    }
    save_results("week0", "quantize", results)
    print(format_table(rows, cfg.batch_size))
    return results


def format_table(rows: dict, batch_size: int) -> str:
    lines = [
        f"| variant | accuracy | on-disk bytes | Linear/Conv weight bytes | latency / {batch_size} (median) |",
        "|---|---|---|---|---|",
    ]
    fp32 = rows["fp32"]
    for name, r in rows.items():
        ratio = (
            ""
            if name == "fp32"
            else f" ({100 * r['layer_weight_bytes'] / fp32['layer_weight_bytes']:.0f}%)"
        )
        lines.append(
            f"| {name} | {100 * r['accuracy']:.2f}% | {r['disk_bytes']:,} | "
            f"{r['layer_weight_bytes']:,}{ratio} | {r['latency_ms_median']:.2f} ms |"
        )
    return "\n".join(lines)


def plot_quant(rows: dict, path: Path) -> Path:
    names = list(rows)
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    panels = [
        ("accuracy (%)", [100 * rows[n]["accuracy"] for n in names]),
        ("Linear/Conv weights (KiB)", [rows[n]["layer_weight_bytes"] / 1024 for n in names]),
        ("latency / batch (ms)", [rows[n]["latency_ms_median"] for n in names]),
    ]
    for ax, (title, vals) in zip(axes, panels):
        bars = ax.bar(names, vals, color=["#777", "#3b7dd8", "#e07b39"])
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_title(title)
        if title.startswith("accuracy"):
            ax.set_ylim(min(vals) - 2, 100)
    fig.suptitle("int8 post-training quantization of the MNIST model (CPU)")
    return save(fig, path)


def parse_args(argv: list[str] | None = None) -> QuantConfig:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--run-name", default="mnist-cnn", help="runs/week0/<run-name>/checkpoint.pt"
    )
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    return QuantConfig(run_name=args.run_name, batch_size=args.batch_size, repeats=args.repeats)


if __name__ == "__main__":
    main(parse_args())
