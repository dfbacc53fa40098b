"""Week 0's section of the portfolio report (see common/report.py)."""

from __future__ import annotations

from pathlib import Path

from common.report import md_table, rel_link
from common.results import read_json

TRAINING_RUNS = ("mnist-cnn", "mnist-mlp")


def training_parts(r: dict, run_dir: Path, report_dir: Path) -> list[str]:
    """One trained classifier: accuracy, size, time and machine; its curve and its mistakes."""
    env = r["environment"]
    text = (
        f"**MNIST {r['model'].upper()}** ({r['params']:,} parameters, data: {r['data']['source']}, "
        f"{r['data']['n_train']:,} train / {r['data']['n_test']:,} test): test accuracy "
        f"**{100 * r['test_accuracy']:.2f}%** ({r['test_errors']} errors), trained in "
        f"{r['train_seconds']:.0f} s on {env['device']} "
        f"({env['cpu_model']}, {env['torch_threads']} threads)."
    )
    imgs = " ".join(
        f"![{p}]({rel_link(run_dir / p, report_dir)})"
        for p in ("training_curve.png", "misclassified.png")
    )
    return [text, imgs]


def quantize_parts(q: dict, plot: str) -> list[str]:
    """The int8 table: accuracy, bytes and latency of each variant against fp32."""
    fp32 = q["variants"]["fp32"]
    rows = []
    for name, v in q["variants"].items():
        ratio = 100 * v["layer_weight_bytes"] / fp32["layer_weight_bytes"]
        rows.append(
            [
                name,
                f"{100 * v['accuracy']:.2f}%",
                f"{v['disk_bytes']:,}",
                f"{v['layer_weight_bytes']:,} ({ratio:.0f}%)",
                f"{v['latency_ms_median']:.2f}",
            ]
        )
    headers = ["variant", "accuracy", "bytes on disk", "Linear/Conv weight bytes", "latency (ms)"]
    table = (
        f"**Post-training int8** of the {q['model'].upper()} (latency: median per batch "
        f"of {q['batch_size']} on CPU):\n\n" + md_table(headers, rows)
    )
    return [table, f"![quantization]({plot})"]


def micrograd_part(m: dict, plot: str) -> str:
    return (
        f"**micrograd**: a {m['n_params']}-parameter MLP built on a scalar autograd engine "
        f"reaches {100 * m['train_accuracy']:.0f}% training accuracy on two moons "
        f"in {m['config']['steps']} steps ({m['seconds']:.0f} s).\n\n"
        f"![decision boundary]({plot})"
    )


def section(runs: Path) -> str | None:
    week, report_dir = runs / "week0", runs / "report"
    parts: list[str] = []
    for run in TRAINING_RUNS:
        path = week / run / "results.json"
        if path.exists():
            parts += training_parts(read_json(path), week / run, report_dir)
    qpath = week / "quantize" / "results.json"
    if qpath.exists():
        plot = rel_link(week / "quantize" / "quantization.png", report_dir)
        parts += quantize_parts(read_json(qpath), plot)
    mpath = week / "micrograd" / "results.json"
    if mpath.exists():
        plot = rel_link(week / "micrograd" / "decision_boundary.png", report_dir)
        parts.append(micrograd_part(read_json(mpath), plot))
    return "\n\n".join(parts) if parts else None
