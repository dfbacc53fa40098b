"""Week 0's generated README tables (see common/docs.py): the numbers they show, and how."""

from __future__ import annotations

from common.docs import Table, register
from common.report import md_table

VARIANT_NAMES = {
    "fp32": "fp32",
    "torchao_int8": "torchao int8 (W8A8 dynamic, Linear only)",
    "hand_int8": "hand int8 (per-channel, Linear + Conv)",
}


def quantize_numbers(r: dict) -> dict:
    variants = {}
    for key, v in r["variants"].items():
        lat = v["latency"]
        variants[key] = {
            "accuracy": v["accuracy"],
            "disk_bytes": v["disk_bytes"],
            "layer_weight_bytes": v["layer_weight_bytes"],
            "latency_ms": {k: lat[k] for k in ("median_ms", "min_ms", "p90_ms")},
            "prediction_agreement": v.get("prediction_agreement", 1.0),
        }
    repeats = next(iter(r["variants"].values()))["latency"]["repeats"]
    return {"batch_size": r["batch_size"], "repeats": repeats, "variants": variants}


def quantize_table(n: dict) -> str:
    fp32 = n["variants"]["fp32"]["layer_weight_bytes"]
    rows = []
    for key, v in n["variants"].items():
        lat = v["latency_ms"]
        share = f" ({100 * v['layer_weight_bytes'] / fp32:.0f}%)" if key != "fp32" else ""
        rows.append(
            [
                VARIANT_NAMES.get(key, key),
                f"{100 * v['accuracy']:.2f}%",
                f"{100 * v['prediction_agreement']:.1f}%",
                f"{v['disk_bytes']:,}",
                f"{v['layer_weight_bytes']:,}{share}",
                f"{lat['median_ms']:.1f} [{lat['min_ms']:.1f}–{lat['p90_ms']:.1f}]",
            ]
        )
    headers = ["variant", "accuracy", "same predictions as fp32", "bytes on disk (state_dict)"]
    headers += ["Linear/Conv weight bytes", f"latency / {n['batch_size']} in ms: median [min–p90]"]
    return md_table(headers, rows) + f"\n\nLatency: {n['repeats']} timed batches per variant."


register(Table("week0-quantize", "week0", "week0/quantize/results.json", quantize_numbers,
               quantize_table))  # fmt: skip
