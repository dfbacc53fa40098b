"""Week 3's section of the portfolio report (see common/report.py)."""

from __future__ import annotations

from pathlib import Path

from common.report import md_table, rel_link
from common.results import read_json


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _tasks_table(s: dict) -> str:
    served = {r["adapter"]: r for r in (s.get("serve") or {}).get("scores", [])}
    rows = [
        [
            t["task"],
            _pct(t["base_exact"]),
            _pct(t["adapter_exact"]),
            _pct(served[t["task"]]["served_exact"]) if t["task"] in served else "—",
            f"{t['train_seconds']:.0f} s ({t['steps']} steps)",
            f"{100 * t['trainable_fraction']:.2f}%",
        ]
        for t in s["tasks"]
    ]
    head = ["task", "base", "LoRA (local)", "LoRA (vLLM)", "train time", "trainable / base"]
    return (
        "One LoRA adapter per task on week 1's exported model (trainable share of the base in "
        "the last column); exact match on held-out prompts, greedy decoding, scored the same "
        "way locally (HF + peft) and through vLLM CPU serving every adapter at once.\n\n"
        + md_table(head, rows)
    )


def _qlora(q: dict) -> str:
    fp32 = q["base_weight_bytes_fp32"]
    return (
        f"**QLoRA** on `{q['task']}` (base in 4-bit NF4 + double quant): exact match "
        f"{_pct(q['exact'])} vs {_pct(q['lora_exact'])} with plain LoRA; base weights "
        f"{q['base_weight_bytes_nf4'] / 2**20:.2f} MiB vs "
        + (f"{fp32 / 2**20:.2f} MiB fp32" if fp32 else "— fp32")
        + f"; {q['seconds_per_step']:.2f} s/step."
    )


def _dpo(d: dict) -> str:
    sft, dpo = d["sft"], d["dpo"]
    return (
        f"**DPO** on `{d['task']}` from its SFT adapter: held-out reward accuracy "
        f"{d['reward_accuracy']:.3f} (reward margin {d['reward_margin']:.2f}); mean "
        f"log π(chosen) − log π(rejected) {sft['margin_mean']:.1f} → {dpo['margin_mean']:.1f}; "
        f"near-miss answers {_pct(sft['near_miss_rate'])} → {_pct(dpo['near_miss_rate'])}, "
        f"exact match {_pct(sft['exact_match'])} → {_pct(dpo['exact_match'])}."
    )


def _serving(serve: dict) -> list[str]:
    parts = []
    if serve.get("bench"):
        head = ["requests go to", "output tok/s", "mean TTFT ms", "mean TPOT ms", "failed"]
        rows = [
            [
                b["label"],
                f"{b['output_throughput']:.0f}",
                f"{b['mean_ttft_ms']:.0f}",
                f"{b['mean_tpot_ms']:.1f}",
                b["failed"],
            ]
            for b in serve["bench"]
        ]
        parts.append(
            "**Multi-LoRA serving cost** (week 2's harness, same prompts):\n\n"
            + md_table(head, rows)
        )
    r = serve.get("runtime_load")
    if r and "error" not in r:
        parts.append(
            f"Loading adapter `{r['name']}` into the running server took {r['load_seconds']:.2f} s "
            f"(first request to it {r['first_request_seconds']:.2f} s)."
        )
    if serve.get("failed_requests"):
        parts.append(f"Failed requests while scoring: {serve['failed_requests']}.")
    return parts


def section(runs: Path) -> str | None:
    week, report_dir = runs / "week3", runs / "report"
    path = week / "summary" / "results.json"
    if not path.exists():
        return None
    s = read_json(path)
    parts = [_tasks_table(s)]
    png = week / "summary" / "before_after.png"
    if png.exists():
        parts.append(f"![before/after]({rel_link(png, report_dir)})")
    parts += [_qlora(q) for q in s["qlora"]]
    for d in s["dpo"]:
        parts.append(_dpo(d))
        png = week / f"dpo-{d['task']}" / "before_after.png"
        if png.exists():
            parts.append(f"![dpo]({rel_link(png, report_dir)})")
    if s.get("serve"):
        parts += _serving(s["serve"])
    return "\n\n".join(parts)
