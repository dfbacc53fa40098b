"""Week 2's section of the portfolio report (see common/report.py): the week-level glue that
reads the harness's, the quant package's and the engine's results side by side."""

from __future__ import annotations

from pathlib import Path

from common.report import md_table, rel_link
from common.results import read_json
from week2_serving.cost import cost_header, cost_text
from week2_serving.quant import report_section


def section(runs: Path) -> str | None:
    """Week 2 for the portfolio: each sweep's table, quantization quality, the harness check
    against `vllm bench serve`, and our engine; None when nothing of week 2 has run."""
    week, report_dir = runs / "week2", runs / "report"
    parts: list[str] = []
    for sweep_report in sorted(week.glob("sweep-*/report.md")):
        parts += sweep_part(sweep_report.parent, report_dir)
    quality = quant_quality(week)
    if quality:
        parts.append("**Quantized variants of the week 1 model** (vLLM CPU):\n\n" + quality)
    for part in (validate_part(week), engine_section(week, report_dir)):
        if part:
            parts.append(part)
    return "\n\n".join(parts) if parts else None


def sweep_part(sweep: Path, report_dir: Path) -> list[str]:
    """One sweep: its cells (the levers) in a short table with their cost per 1M output tokens,
    a link to its full report, two of its plots."""
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
            cost_text(c),
        ]
        for c in cells
    ]
    head = ["server", "load", "output tok/s", "mean TTFT ms", "p99 TTFT ms", "mean TPOT ms"]
    head += ["failed", cost_header(cells)]
    parts = [
        f"**Sweep `{sweep.name}`** — full report: [{sweep.name}/report.md]"
        f"({rel_link(sweep / 'report.md', report_dir)})\n\n" + md_table(head, rows)
    ]
    for png in ("throughput_vs_concurrency.png", "pareto.png"):
        if (sweep / png).exists():
            parts.append(f"![{png}]({rel_link(sweep / png, report_dir)})")
    return parts


def validate_part(week: Path) -> str | None:
    """The harness against `vllm bench serve`, from runs/week2/validate/results.json."""
    vpath = week / "validate" / "results.json"
    if not vpath.exists():
        return None
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
    return (
        f"**Harness vs `vllm bench serve`** (same server and workload, median of "
        f"{v['config']['rounds']} rounds):\n\n"
        + md_table(["metric", "vllm bench serve", "ours", "difference", "within 10%"], rows)
    )


def engine_section(week: Path, report_dir: Path) -> str | None:
    """Our engine (week 2b) against itself and vLLM, from runs/week2/engine/results.json."""
    path = week / "engine" / "results.json"
    if not path.exists():
        return None
    r = read_json(path)
    s, mem = r["summary"], r["memory"]
    x = lambda v: "n/a" if v is None else f"{v:.2f}x"
    rows = [
        ["continuous vs sequential batching, concurrency 32", x(s["continuous_vs_sequential_c32"])],
        [
            "continuous vs static batching, mixed output lengths",
            x(s["continuous_vs_static_mixed_c32"]),
        ],
        *[[f"ours / vLLM CPU, {k}", x(v)] for k, v in s["ours_vs_vllm"].items()],
        [
            "prefix caching: mean TTFT on shared prefixes",
            "n/a"
            if s["prefix_caching_ttft_cut"] is None
            else f"-{100 * s['prefix_caching_ttft_cut']:.0f}% "
            f"({s['prefix_caching_ttft_ms']['off']:.0f} -> {s['prefix_caching_ttft_ms']['on']:.0f} ms)",
        ],
        [
            "KV cache filled: paged vs max-length reservation",
            f"{100 * mem['utilization_paged']:.0f}% vs {100 * mem['utilization_naive_max_len']:.0f}%",
        ],
        ["failed requests", s["failed_requests"]],
    ]
    text = (
        "**Our engine** (paged KV cache, continuous batching, prefix caching), output-token "
        "throughput ratios from one run of `python -m week2_serving.engine.bench`:\n\n"
    )
    text += md_table(["comparison", "measured"], rows)
    for png in ("throughput.png", "kv_memory.png"):
        if (week / "engine" / png).exists():
            text += f"\n\n![{png}]({rel_link(week / 'engine' / png, report_dir)})"
    return text


def quant_quality(week: Path) -> str | None:
    """The quantization quality table, with speed from the CPU sweep when it ran."""
    sweep = week / "sweep-cpu"
    cells = [read_json(p) for p in sorted(sweep.glob("*/*/results.json"))]
    meta = sweep / "sweep.json"
    servers = read_json(meta)["config"]["servers"] if meta.is_file() else []
    return report_section(week, cells, servers[0]["name"] if servers else None)
