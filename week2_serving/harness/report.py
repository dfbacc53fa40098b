"""The one-page serving report of a sweep: plots, the lever table, cost, and the decode roofline.

    python -m week2_serving.harness.report runs/week2/sweep-cpu --gpu-hour-usd 2.0
    python -m week2_serving.report runs/week2/sweep-cpu   # the same, with week 2's extra sections

Writes SWEEP_DIR/report.md and PNGs beside it:
- throughput vs concurrency, TTFT and TPOT (p50 / p99) vs concurrency, per server setting;
- the latency–throughput Pareto front (median TPOT vs output throughput);
- "which lever moved what": each server setting against the first (baseline) at equal load;
- cost per 1M output tokens at the given price per machine-hour;
- the decode roofline: a decode step reads the weights once plus every sequence's KV cache,
  so tokens/s ≤ batch × bandwidth / (weight bytes + KV bytes); the measured fraction of that
  ceiling is the memory-bandwidth utilisation (MBU); whether the weights fit in the CPU's
  last-level cache, and so which memory roof applies (report_roof.py, from week2_serving/arith);
- capacity under an SLO: every capacity study beside the sweep (runs/week2/capacity-*), its
  capacity per lever, the check at it and at 1.25x, $ per 1M tokens, the SLO frontier plot;
- multi-turn prefix caching: every prefix study beside the sweep (runs/week2/prefix-study-*),
  the server's hit rate and TTFT by turn with the cache on and off, its plot;
- any extra sections its caller passes (`build(..., extra_sections=...)`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.cli import build_parser, config_from_args
from common.report import md_table
from common.results import atomic_write_bytes, get_logger, read_json
from week2_serving.harness.capacity_page import capacity_section
from week2_serving.harness.prefix_study import prefix_section
from week2_serving.harness.report_plots import pareto, plots
from week2_serving.harness.report_roof import roof_section

__all__ = ["Section", "build", "load_cells", "main", "pareto", "roofline"]

log = get_logger("week2.report")


def load_cells(sweep: Path) -> list[dict]:
    cells = []
    for path in sorted(sweep.glob("*/*/results.json")):
        r = read_json(path)
        r.setdefault("server_name", path.parent.parent.name)
        r.setdefault("load_name", path.parent.name)
        r.pop("requests", None)
        cells.append(r)
    return cells


def errors(sweep: Path) -> list[dict]:
    """The failed cells (error.json), each with server/load names, engine, model, args, error
    and log tail; older files that stored the whole server entry as "server" are read too."""
    out = []
    for path in sorted(sweep.glob("*/*/error.json")):
        rec = read_json(path)
        entry = rec.get("server") if isinstance(rec.get("server"), dict) else {}
        out.append(
            {
                "server": rec.get("server_name") or path.parent.parent.name,
                "load": rec.get("load_name") or path.parent.name,
                "engine": rec.get("engine") or entry.get("engine", ""),
                "model": rec.get("model") or entry.get("model", ""),
                "args": rec.get("args") or entry.get("args") or [],
                "error": rec.get("error") or "(no error recorded)",
                "log_tail": rec.get("log_tail") or "",
            }
        )
    return out


def short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def failed_part(errs: list[dict]) -> list[str]:
    """The failed-cells table (server, what it ran, the error's first line), then each distinct
    server log's last lines in a collapsible block (cells of one failed start share a log)."""
    rows, tails = [], {}
    for e in errs:
        model = Path(e["model"]).name if str(e["model"]).startswith("/") else e["model"]
        ran = " · ".join(x for x in (e["engine"], model, " ".join(e["args"])) if x)
        first_line = (e["error"].strip().splitlines() or [""])[0].replace("|", "\\|")
        rows.append([e["server"], e["load"], short(ran, 80) or "?", short(first_line, 160)])
        if e["log_tail"]:
            tails.setdefault((e["server"], e["log_tail"]), []).append(e["load"])
    blocks = [
        f"<details><summary>{server} ({', '.join(loads)}): last lines of the server log"
        f"</summary>\n\n```\n{tail}\n```\n</details>\n"
        for (server, tail), loads in tails.items()
    ]
    table = md_table(["server", "load", "engine · model · args", "error"], rows)
    return ["\n## Failed cells\n", table, "", *blocks]


def measure_bandwidth_gbs(size_mb: int = 256, repeats: int = 5) -> float:
    """Memory bandwidth of this machine as torch sees it: bytes read + written by a copy / time."""
    src = torch.empty(size_mb * 2**20 // 4, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best / 1e9


def model_bytes(model_dir: str) -> dict | None:
    """Weight bytes and per-token KV bytes of an HF folder (None for hub ids not on disk)."""
    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        return None
    cfg = json.loads((folder / "config.json").read_text())
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    layers = cfg.get("num_hidden_layers") or cfg.get("n_layer")
    heads = cfg.get("num_attention_heads") or cfg.get("n_head")
    kv_heads = cfg.get("num_key_value_heads") or heads
    hidden = cfg.get("hidden_size") or cfg.get("n_embd")
    head_dim = cfg.get("head_dim") or hidden // heads
    elem = 4 if str(cfg.get("torch_dtype", cfg.get("dtype", "float32"))) == "float32" else 2
    return {"weight_bytes": weights, "kv_bytes_per_token": 2 * layers * kv_heads * head_dim * elem}


def roofline(cell: dict, mb: dict, bandwidth_gbs: float) -> dict:
    """Decode ceiling for this cell's batch and average context, and the measured fraction (MBU)."""
    batch = cell.get("max_concurrency") or cell["num_prompts"]
    in_len = cell["total_input_tokens"] / max(cell["completed"], 1)
    out_len = cell["total_output_tokens"] / max(cell["completed"], 1)
    context = in_len + out_len / 2  # average context seen during decode
    step_bytes = mb["weight_bytes"] + batch * context * mb["kv_bytes_per_token"]
    ceiling = batch * bandwidth_gbs * 1e9 / step_bytes
    measured = cell["output_throughput"]
    return {
        "batch": batch,
        "bytes_per_step": step_bytes,
        "ceiling_tok_s": ceiling,
        "mbu": measured / ceiling,
    }


def change(new: dict, old: dict, key: str) -> str:
    return f"{100 * (new[key] - old[key]) / old[key]:+.0f}%" if old[key] else "n/a"


def lever_table(cells: list[dict], servers: list[str]) -> str:
    base = servers[0]
    by = {(c["server_name"], c["load_name"]): c for c in cells}
    rows = []
    for s in servers[1:]:
        for (srv, load), c in by.items():
            b = by.get((base, load))
            if srv != s or b is None:
                continue
            rows.append(
                [
                    s,
                    load,
                    change(c, b, "output_throughput"),
                    change(c, b, "mean_ttft_ms"),
                    change(c, b, "mean_tpot_ms"),
                    change(c, b, "p99_ttft_ms"),
                ]
            )
    if not rows:
        return "(one server setting only: nothing to compare)"
    return md_table(
        [f"lever (vs {base})", "load", "output tok/s", "mean TTFT", "mean TPOT", "p99 TTFT"], rows
    )


Section = Callable[[Path, list[dict], str | None], str | None]
"""An extra section of the report: (sweep folder, its cells, baseline server) -> markdown or
None to leave it out. The caller chooses them (week2_serving/report.py adds quantization
quality); the harness knows none of them."""


@dataclass
class ReportConfig:
    """The one-page serving report of a sweep folder (report.md and plots beside it)."""

    sweep_dir: Path = field(metadata={"cli": False})  # the sweep's folder (positional)
    gpu_hour_usd: float = 2.0  # price of one machine-hour, for cost per 1M tokens
    mem_bandwidth_gbs: float | None = None  # memory bandwidth (none: measured with a tensor copy)


def sweep_meta(sweep: Path, cells: list[dict]) -> tuple[dict, list[str]]:
    """The sweep's config (sweep.json) and its server names in config order, those with cells."""
    meta = read_json(sweep / "sweep.json")["config"] if (sweep / "sweep.json").exists() else {}
    servers = [s["name"] for s in meta.get("servers", [])] or sorted(
        {c["server_name"] for c in cells}
    )
    return meta, [s for s in servers if any(c["server_name"] == s for c in cells)]


def cell_row(c: dict, usd_per_hour: float, bw: float) -> list:
    """One row of the main table: throughput, latencies, cost and the decode roofline."""
    tput = c["output_throughput"]
    cost = usd_per_hour / (tput * 3600) * 1e6 if tput else math.inf
    mb = model_bytes(c.get("server", {}).get("model") or c.get("tokenizer_id", ""))
    roof = roofline(c, mb, bw) if mb else None
    return [
        c["server_name"],
        c["load_name"],
        c["completed"],
        c["failed"],
        f"{tput:.0f}",
        f"{c['mean_ttft_ms']:.0f} / {c['p99_ttft_ms']:.0f}",
        f"{c['mean_tpot_ms']:.2f} / {c['p99_tpot_ms']:.2f}",
        f"${cost:.2f}",
        f"{roof['ceiling_tok_s']:.0f} ({100 * roof['mbu']:.0f}%)" if roof else "n/a",
    ]


def main_table(cells: list[dict], servers: list[str], usd_per_hour: float, bw: float) -> str:
    order = sorted(cells, key=lambda c: (servers.index(c["server_name"]), c["load_name"]))
    head = ["server", "load", "ok", "failed", "output tok/s", "TTFT mean / p99 (ms)"]
    head += ["TPOT mean / p99 (ms)", f"$ per 1M output tok (${usd_per_hour:g}/h)"]
    head += ["decode ceiling tok/s (MBU)"]
    return md_table(head, [cell_row(c, usd_per_hour, bw) for c in order])


ROOFLINE_TEXT = (
    "Each decode step reads every weight once and every running sequence's KV cache. With "
    "B sequences of average context L: bytes/step = weights + B·L·(KV bytes per token), and "
    "tokens/s ≤ B · bandwidth / bytes/step. MBU is the measured output tokens/s over that "
    "ceiling. Low MBU at small batch means the step is bound by something other than memory "
    "(Python and kernel-launch overhead on a small model)."
)


def build(
    sweep: Path,
    usd_per_hour: float = 2.0,
    bandwidth_gbs: float | None = None,
    extra_sections: Mapping[str, Section] | None = None,
) -> Path:
    """Write SWEEP/report.md (and its plots); `extra_sections` (title -> Section) come after
    the lever table, each only when it returns text."""
    sweep = Path(sweep)
    cells = load_cells(sweep)
    if not cells:
        failed = len(errors(sweep)) if sweep.is_dir() else 0
        raise FileNotFoundError(
            f"{sweep} has no */*/results.json cells"
            + (f" ({failed} failed: see */*/error.json)" if failed else "")
            + "; run python -m week2_serving.harness.sweep first"
        )
    meta, servers = sweep_meta(sweep, cells)
    imgs = plots(cells, servers, sweep)
    bw = bandwidth_gbs or measure_bandwidth_gbs()
    env = cells[0]["environment"]
    extras = []
    sections = {"Capacity under an SLO": capacity_section, **(extra_sections or {})}
    sections["Multi-turn: prefix caching on vs off"] = prefix_section
    for title, section in sections.items():
        body = section(sweep, cells, servers[0] if servers else None)
        extras += [f"\n## {title}\n", body] if body else []
    text = [
        f"# Serving report: `{sweep.name}`\n",
        f"Engine: {meta.get('engine', '?')}, model: `{meta.get('model', '?')}`. Machine: "
        f"{env['cpu_model']}, {env['cpu_count']} cores, GPU: {env['gpu_name'] or 'none'}. "
        f"Memory bandwidth (torch copy): {bw:.1f} GB/s.\n",
        main_table(cells, servers, usd_per_hour, bw),
        "\n## Which lever moved what\n",
        lever_table(cells, servers),
        *extras,
        "\n## Plots\n",
        "\n".join(f"![{i}]({i})" for i in imgs),
        "\n## The decode roofline\n",
        ROOFLINE_TEXT,
    ]
    roof = roof_section(cells, servers, bw)
    text += ["\n### Which roof applies: cache or DRAM\n", roof] if roof else []
    errs = errors(sweep)
    if errs:
        text += failed_part(errs)
    path = sweep / "report.md"
    atomic_write_bytes(path, "\n".join(text).encode())
    log.info("wrote %s", path)
    return path


def parse_args(argv: list[str] | None = None, description: str | None = None) -> ReportConfig:
    """ReportConfig from the command line: SWEEP_DIR, then its flags."""
    p = build_parser(ReportConfig, description=description or __doc__)
    p.add_argument("sweep_dir", type=Path, help="a sweep's folder, e.g. runs/week2/sweep-cpu")
    return config_from_args(ReportConfig, p.parse_args(argv))


def main(argv: list[str] | None = None) -> Path:
    cfg = parse_args(argv)
    return build(cfg.sweep_dir, cfg.gpu_hour_usd, cfg.mem_bandwidth_gbs)


if __name__ == "__main__":
    main()
