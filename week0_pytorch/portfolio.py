"""Week 0's section of the portfolio report (see common/report.py)."""

from __future__ import annotations

from pathlib import Path

from common.report import md_table, rel_link
from common.results import read_json


def section(runs: Path) -> str | None:
    week = runs / "week0"
    report_dir = runs / "report"
    parts: list[str] = []
    found = False
    for run in ("mnist-cnn", "mnist-mlp"):
        path = week / run / "results.json"
        if not path.exists():
            continue
        found = True
        r = read_json(path)
        parts.append(
            f"**MNIST {r['model'].upper()}** ({r['params']:,} parameters, data: {r['data']['source']}, "
            f"{r['data']['n_train']:,} train / {r['data']['n_test']:,} test): test accuracy "
            f"**{100 * r['test_accuracy']:.2f}%** ({r['test_errors']} errors), trained in "
            f"{r['train_seconds']:.0f} s on {r['environment']['device']} "
            f"({r['environment']['cpu_model']}, {r['environment']['torch_threads']} threads)."
        )
        imgs = " ".join(
            f"![{p}]({rel_link(week / run / p, report_dir)})"
            for p in ("training_curve.png", "misclassified.png")
        )
        parts.append(imgs)
    qpath = week / "quantize" / "results.json"
    if qpath.exists():
        found = True
        q = read_json(qpath)
        rows = []
        fp32 = q["variants"]["fp32"]
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
        parts.append(
            f"**Post-training int8** of the {q['model'].upper()} (latency: median per batch "
            f"of {q['batch_size']} on CPU):\n\n"
            + md_table(
                [
                    "variant",
                    "accuracy",
                    "bytes on disk",
                    "Linear/Conv weight bytes",
                    "latency (ms)",
                ],
                rows,
            )
        )
        parts.append(
            f"![quantization]({rel_link(week / 'quantize' / 'quantization.png', report_dir)})"
        )
    mpath = week / "micrograd" / "results.json"
    if mpath.exists():
        found = True
        m = read_json(mpath)
        parts.append(
            f"**micrograd**: a {m['n_params']}-parameter MLP built on a scalar autograd engine "
            f"reaches {100 * m['train_accuracy']:.0f}% training accuracy on two moons "
            f"in {m['config']['steps']} steps ({m['seconds']:.0f} s).\n\n"
            f"![decision boundary]({rel_link(week / 'micrograd' / 'decision_boundary.png', report_dir)})"
        )
    return "\n\n".join(parts) if found else None
