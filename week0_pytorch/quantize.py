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

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from common.checkpoint import load_checkpoint
from common.cli import parse
from common.plots import plt, save
from common.results import get_logger, run_dir, runs_root, save_results
from common.timing import benchmark, environment
from week0_pytorch.int8 import (
    layer_weight_bytes,
    quantize_model_by_hand,
    quantize_model_torchao,
    state_dict_bytes,
)
from week0_pytorch.mnist import load_mnist, to_float
from week0_pytorch.models import build_model

log = get_logger("week0.quantize")


@dataclass
class QuantConfig:
    """Quantize a trained MNIST model to int8 two ways and measure all three variants."""

    run_name: str = "mnist-cnn"  # which runs/week0/<run-name>/checkpoint.pt to quantize
    batch_size: int = 256  # latency is measured per batch of this size
    repeats: int = 30  # timed batches per variant (the median is reported)
    warmup: int = 5  # untimed batches before them

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


if __name__ == "__main__":
    main(parse(QuantConfig, description=__doc__))
