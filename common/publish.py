"""`make publish`: a self-contained portfolio page a learner can commit to their own fork.

    python -m common.publish                          # -> portfolio/README.md + its images
    python -m common.publish --out ~/site/inference --junit runs/junit.xml

The page: a headline report card (each number beside its target), what was built, the
correctness evidence (the equality and property tests, and whether they passed when a pytest
JUnit XML is given), the full report of every week (`common.report`), and the provenance of
every results file. Every image or file the page links to is copied beside it under `runs/`
(a linked Markdown report with its own images too), links are relative, files are 0644, so the
folder reads the same on GitHub, in a zip or on a laptop.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from common.cli import parse
from common.evidence import EVIDENCE, check_registry, junit_outcomes
from common.headline import headline_table
from common.report import build_report, md_table, rel_link
from common.results import FILE_MODE, REPO_ROOT, atomic_write_bytes, get_logger, runs_root

log = get_logger("publish")

LINK = re.compile(r"(!?)\[([^\]]*)\]\(([^)\s]+)\)")
MAX_COPY_BYTES = 20 * 2**20  # a linked file above this stays out (a model, a dataset)

# what the curriculum has the learner build: (what, where in the repository)
BUILT = [
    ("MNIST classifiers by hand, int8 quantization, a scalar autograd engine", "week0_pytorch"),
    ("A GPT (GPT-2 and Llama presets, RoPE, GQA) with a KV cache, exported to HF", "week1_gpt_kvcache"),
    ("A serving engine: paged KV cache, continuous batching, prefix caching, OpenAI API",
     "week2_serving/engine"),
    ("A benchmark harness: sweeps, capacity under an SLO, reports, validated against vLLM's",
     "week2_serving/harness"),
    ("Inference arithmetic: KV bytes, what fits, rooflines, MFU/MBU, $ per 1M tokens",
     "week2_serving/arith"),
    ("LoRA / QLoRA / DPO fine-tuning and multi-LoRA serving on vLLM", "week3_finetune_lora"),
]  # fmt: skip


def copy_linked(text: str, base: Path, runs: Path, out: Path, rewrite: bool) -> str:
    """Copy every local file `text` links to (relative to `base`) into `out/runs/...`.

    `rewrite`: point the links at the copies (the page itself); a copied report keeps its
    links, which stay valid because the copies keep their layout under runs/. A link to a
    folder, a missing file or one outside runs/ becomes plain text."""

    def one(m: re.Match) -> str:
        bang, label, target = m.groups()
        if re.match(r"^[a-z]+:|^#", target):
            return m.group(0)  # a URL or an anchor
        src = (base / target).resolve()
        if not (src.is_file() and src.is_relative_to(runs.resolve())):
            return f"`{label}`" if bang == "" else f"({label}: not published)"
        if src.stat().st_size > MAX_COPY_BYTES:
            return f"`{label}` (not published: {src.stat().st_size / 2**20:.0f} MiB)"
        rel = src.relative_to(runs.resolve())
        dest = out / "runs" / rel
        if not dest.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix == ".md":
                copied = copy_linked(src.read_text(), src.parent, runs, out, rewrite=False)
                atomic_write_bytes(dest, copied.encode())
            else:
                shutil.copyfile(src, dest)
                os.chmod(dest, FILE_MODE)
        return f"{bang}[{label}]({Path('runs', rel).as_posix()})" if rewrite else m.group(0)

    return LINK.sub(one, text)


def evidence_section(junit: Path | None) -> str:
    missing = set(check_registry())
    outcomes = junit_outcomes(junit) if junit and junit.is_file() else {}
    rows = []
    for e in EVIDENCE:
        if e.test in missing:
            state = "**test missing**"
        else:
            state = outcomes.get(e.test, "not in this run" if outcomes else "run `make test`")
        rows.append([e.week, e.kind, e.proves, f"`{e.test}`", state])
    source = f"results of `{junit.name}`" if outcomes else "no test results given (`--junit`)"
    return (
        "## Correctness evidence\n\nEvery optimisation is tested against its plain reference "
        f"({source}):\n\n" + md_table(["week", "kind", "proves", "test", "result"], rows)
    )


def provenance_section(runs: Path) -> str:
    """Each results file: the command, commit, machine and date behind it."""
    from common.results import read_json

    rows = []
    for path in sorted(runs.glob("week*/**/results.json")):
        try:
            env = read_json(path).get("environment") or {}
        except ValueError:
            continue
        commit = (env.get("git_commit") or "?")[:7] + ("+" if env.get("git_dirty") else "")
        cmd = " ".join(["python", *str(env.get("command") or "?").split()[1:]])[:90]
        gpu = env.get("gpu_name") or "no GPU"
        machine = f"{env.get('cpu_model', '?')}, {env.get('cpu_count', '?')} cores, {gpu}"
        rows.append([f"`{path.parent.relative_to(runs)}`", f"`{cmd}`", commit, machine])
    if not rows:
        return ""
    headers = ["results", "command", "commit (+ = uncommitted changes)", "machine"]
    return "## Provenance\n\n" + md_table(headers, rows)


def build_page(runs: Path, out: Path, junit: Path | None) -> str:
    report = build_report(runs)
    body = report.read_text().split("\n", 1)[1]  # without its title
    body = copy_linked(body, report.parent, runs, out, rewrite=True)
    body = body.replace("\n## ", "\n### ")  # the weeks under "Results, week by week"
    in_repo = out.is_relative_to(REPO_ROOT)  # links to the code only work inside the repo
    built = [
        [what, f"[`{where}`]({rel_link(REPO_ROOT / where, out)})" if in_repo else f"`{where}`"]
        for what, where in BUILT
    ]
    return (
        "\n\n".join(
            [
                "# Inference-engineering portfolio",
                "## Report card\n\n" + headline_table(runs),
                "## What I built\n\n" + md_table(["what", "code"], built),
                evidence_section(junit),
                "## Results, week by week\n" + body.strip(),
                provenance_section(runs),
            ]
        ).rstrip()
        + "\n"
    )


@dataclass
class PublishConfig:
    """Write a self-contained copy of the portfolio page (page + images, relative links)."""

    out: Path = REPO_ROOT / "portfolio"  # the folder to (re)write; commit it to your fork
    runs_dir: Path | None = None  # the results root; None = runs/ (or $IE_RUNS_DIR)
    junit: Path | None = None  # a pytest --junitxml file: the evidence table says what passed


def main(cfg: PublishConfig) -> Path:
    runs, out = (cfg.runs_dir or runs_root()).resolve(), cfg.out.resolve()
    if out == runs or runs.is_relative_to(out):
        raise SystemExit(f"--out {out} would hold the results folder {runs}: pick another folder")
    if (out / "runs").exists():
        shutil.rmtree(out / "runs")  # copies of an earlier publish
    out.mkdir(parents=True, exist_ok=True)
    page = atomic_write_bytes(out / "README.md", build_page(runs, out, cfg.junit).encode())
    for d in [out, *(p for p in out.rglob("*") if p.is_dir())]:
        os.chmod(d, 0o755)
    log.info("wrote %s", page)
    return page


if __name__ == "__main__":
    main(parse(PublishConfig, description=__doc__))
