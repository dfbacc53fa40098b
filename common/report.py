"""Build the portfolio page, `runs/report/README.md`, from the results files present.

Each week package that has landed provides `<week>.portfolio.section(runs: Path) -> str`.
A week whose results are missing contributes a line saying how to produce them.

    python -m common.report            # writes runs/report/README.md
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path

from common.cli import parse
from common.results import atomic_write_bytes, get_logger, runs_root
from common.timing import environment

log = get_logger("report")

# The weeks in curriculum order: (package, title, how to produce its results).
WEEKS = [
    ("week0_pytorch", "Week 0 — PyTorch fundamentals", "make week0"),
    ("week1_gpt_kvcache", "Week 1 — GPT from scratch and the KV cache", "make week1"),
    ("week2_serving", "Week 2 — Serving and benchmarking", "make week2"),
    ("week3_finetune_lora", "Week 3 — LoRA, QLoRA, DPO and multi-LoRA serving", "make week3"),
]


def md_table(headers: list[str], rows: list[list[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def rel_link(target: Path, report_dir: Path) -> str:
    """Path of `target` relative to the report folder, for Markdown links and images."""
    return Path(os.path.relpath(target, report_dir)).as_posix()


def week_section(package: str, title: str, how: str, runs: Path) -> str:
    try:
        module = importlib.import_module(f"{package}.portfolio")
    except ModuleNotFoundError as e:
        if e.name not in (package, f"{package}.portfolio"):
            raise
        return f"## {title}\n\nNot built yet in this version of the curriculum.\n"
    body = module.section(runs)
    if body is None:
        return f"## {title}\n\nNo results yet: run `{how}` to produce them.\n"
    return f"## {title}\n\n{body.strip()}\n"


def build_report(runs: Path | None = None) -> Path:
    """Write `runs/report/README.md` and return its path."""
    runs = runs or runs_root()
    env = environment()
    parts = [
        "# Inference-engineering portfolio\n",
        "Built by `python -m common.report` from the results files under `runs/`. "
        f"Machine of the last build: {env['cpu_model']}, {env['cpu_count']} cores, "
        f"torch {env['torch']}, GPU: {env['gpu_name'] or 'none'}.\n",
    ]
    parts += [week_section(pkg, title, how, runs) for pkg, title, how in WEEKS]
    path = runs / "report" / "README.md"
    atomic_write_bytes(path, "\n".join(parts).encode())
    log.info("wrote %s", path)
    return path


@dataclass
class ReportConfig:
    """Build the portfolio page from the results files present."""

    runs_dir: Path | None = None  # the results root; None = runs/ (or $IE_RUNS_DIR)


def main(cfg: ReportConfig) -> Path:
    return build_report(cfg.runs_dir)


if __name__ == "__main__":
    main(parse(ReportConfig, description=__doc__))
