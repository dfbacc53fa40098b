"""Week 3's generated README tables (see common/docs.py): the adapters served by our own
engine (week 2's, `week3_finetune_lora.serve --server engine`) scored against local HF + peft."""

from __future__ import annotations

from common.docs import Table, register
from common.report import md_table


def served_numbers(r: dict) -> dict:
    keep = ("adapter", "n", "local_exact", "served_exact", "diff_points", "same_verdict_rate",
            "failed_requests")  # fmt: skip
    return {"scores": [{k: s[k] for k in keep} for s in r["scores"]]}


def served_table(n: dict) -> str:
    rows = [
        [s["adapter"], f"{100 * s['local_exact']:.1f}%", f"{100 * s['served_exact']:.1f}%",
         f"{s['diff_points']:.1f}", f"{100 * s['same_verdict_rate']:.0f}%", s["failed_requests"]]
        for s in n["scores"]
    ]  # fmt: skip
    head = ["adapter", "local (HF + peft)", "served (our engine)", "difference",
            "same verdict per prompt", "failed requests"]  # fmt: skip
    return md_table(head, rows)


register(Table("week3-serve-engine", "week3", "week3/serve-engine/results.json", served_numbers,
               served_table))  # fmt: skip
