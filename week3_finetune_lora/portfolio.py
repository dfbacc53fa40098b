"""Week 3's section of the portfolio report (see common/report.py)."""

from __future__ import annotations

from pathlib import Path

from common.report import md_table, rel_link
from common.results import read_json


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def section(runs: Path) -> str | None:
    week, report_dir = runs / "week3", runs / "report"
    path = week / "summary" / "results.json"
    if not path.exists():
        return None
    s = read_json(path)
    served = {r["adapter"]: r for r in (s.get("serve") or {}).get("scores", [])}
    parts = [
        "One LoRA adapter per task on week 1's exported model (trainable share of the base in "
        "the last column); exact match on held-out prompts, greedy decoding, scored the same "
        "way locally (HF + peft) and through vLLM CPU serving every adapter at once.\n\n"
        + md_table(
            ["task", "base", "LoRA (local)", "LoRA (vLLM)", "train time", "trainable / base"],
            [
                [
                    t["task"],
                    _pct(t["base_exact"]),
                    _pct(t["adapter_exact"]),
                    _pct(served[t["task"]]["served_exact"]) if t["task"] in served else "—",
                    f"{t['train_seconds']:.0f} s ({t['steps']} steps)",
                    f"{100 * t['trainable_fraction']:.2f}%",
                ]
                for t in s["tasks"]
            ],
        )
    ]
    png = week / "summary" / "before_after.png"
    if png.exists():
        parts.append(f"![before/after]({rel_link(png, report_dir)})")
    for q in s["qlora"]:
        fp32 = q["base_weight_bytes_fp32"]
        parts.append(
            f"**QLoRA** on `{q['task']}` (base in 4-bit NF4 + double quant): exact match "
            f"{_pct(q['exact'])} vs {_pct(q['lora_exact'])} with plain LoRA; base weights "
            f"{q['base_weight_bytes_nf4'] / 2**20:.2f} MiB vs "
            + (f"{fp32 / 2**20:.2f} MiB fp32" if fp32 else "— fp32")
            + f"; {q['seconds_per_step']:.2f} s/step."
        )
    for d in s["dpo"]:
        parts.append(
            f"**DPO** on `{d['task']}` from its SFT adapter: held-out reward accuracy "
            f"{d['reward_accuracy']:.3f} (reward margin {d['reward_margin']:.2f}); mean "
            f"log π(chosen) − log π(rejected) {d['sft']['margin_mean']:.1f} → "
            f"{d['dpo']['margin_mean']:.1f}; near-miss answers "
            f"{_pct(d['sft']['near_miss_rate'])} → {_pct(d['dpo']['near_miss_rate'])}, exact match "
            f"{_pct(d['sft']['exact_match'])} → {_pct(d['dpo']['exact_match'])}."
        )
        png = week / f"dpo-{d['task']}" / "before_after.png"
        if png.exists():
            parts.append(f"![dpo]({rel_link(png, report_dir)})")
    serve = s.get("serve")
    if serve and serve.get("bench"):
        parts.append(
            "**Multi-LoRA serving cost** (week 2's harness, same prompts):\n\n"
            + md_table(
                ["requests go to", "output tok/s", "mean TTFT ms", "mean TPOT ms", "failed"],
                [
                    [
                        b["label"],
                        f"{b['output_throughput']:.0f}",
                        f"{b['mean_ttft_ms']:.0f}",
                        f"{b['mean_tpot_ms']:.1f}",
                        b["failed"],
                    ]
                    for b in serve["bench"]
                ],
            )
        )
    if serve and serve.get("runtime_load"):
        r = serve["runtime_load"]
        parts.append(
            f"Loading adapter `{r['name']}` into the running server took {r['load_seconds']:.2f} s "
            f"(first request to it {r['first_request_seconds']:.2f} s)."
        )
    return "\n\n".join(parts)
