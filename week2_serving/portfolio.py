"""Week 2's section of the portfolio report (see common/report.py)."""

from __future__ import annotations

from pathlib import Path

from common.report import md_table, rel_link
from common.results import read_json


def section(runs: Path) -> str | None:
    week, report_dir = runs / "week2", runs / "report"
    parts: list[str] = []
    for sweep_report in sorted(week.glob("sweep-*/report.md")):
        sweep = sweep_report.parent
        cells = [read_json(p) for p in sorted(sweep.glob("*/*/results.json"))]
        rows = [
            [
                c.get("server_name", "?"),
                c.get("load_name", "?"),
                f"{c['output_throughput']:.0f}",
                f"{c['mean_ttft_ms']:.0f}",
                f"{c['p99_ttft_ms']:.0f}",
                f"{c['mean_tpot_ms']:.2f}",
                c["failed"],
            ]
            for c in cells
        ]
        parts.append(
            f"**Sweep `{sweep.name}`** — full report: [{sweep.name}/report.md]"
            f"({rel_link(sweep_report, report_dir)})\n\n"
            + md_table(
                [
                    "server",
                    "load",
                    "output tok/s",
                    "mean TTFT ms",
                    "p99 TTFT ms",
                    "mean TPOT ms",
                    "failed",
                ],
                rows,
            )
        )
        for png in ("throughput_vs_concurrency.png", "pareto.png"):
            if (sweep / png).exists():
                parts.append(f"![{png}]({rel_link(sweep / png, report_dir)})")
    vpath = week / "validate" / "results.json"
    if vpath.exists():
        v = read_json(vpath)
        rows = [
            [
                k,
                f"{s['vllm_bench']:.2f}",
                f"{s['ours']:.2f}",
                f"{100 * s['relative_diff']:+.1f}%",
                "yes" if s["within_tolerance"] else "no",
            ]
            for k, s in v["summary"].items()
        ]
        parts.append(
            f"**Harness vs `vllm bench serve`** (same server and workload, median of "
            f"{v['config']['rounds']} rounds):\n\n"
            + md_table(["metric", "vllm bench serve", "ours", "difference", "within 10%"], rows)
        )
    return "\n\n".join(parts) if parts else None
