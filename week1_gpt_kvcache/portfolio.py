"""Week 1's section of the portfolio report (see common/report.py)."""

from __future__ import annotations

from pathlib import Path

from common.report import md_table, rel_link
from common.results import read_json

TRAINING_RUNS = ("gpt-llama-bpe", "gpt-gpt2-bpe", "gpt-llama-char", "gpt-gpt2-char")


def training_part(r: dict, loss_curve: str) -> str:
    """One trained model: loss against the bigram baseline, the curve, a sample."""
    return (
        f"**GPT, {r['arch']} preset, {r['tokenizer']} tokenizer** ({r['params'] / 1e6:.2f}M parameters, "
        f"corpus: {r['corpus']}, {r['train_tokens']:,} training tokens): validation loss "
        f"**{r['final_val_loss']:.3f}** vs **{r['bigram_val_loss']:.3f}** for the bigram baseline, after "
        f"{r['steps']} steps in {r['train_seconds']:.0f} s on {r['environment']['device']}.\n\n"
        f"![loss]({loss_curve})\n\n"
        f"Sample (temperature 0.8, top-k 50):\n\n```text\n{r['samples'][0][:400]}\n```"
    )


def cache_table(rows: list[dict]) -> str:
    headers = ["new tokens", "cache tok/s", "no-cache tok/s", "speedup", "prefill ms"]
    headers += ["decode ms/token", "same tokens"]
    cells = [
        [
            r["new_tokens"],
            f"{r['cache']['tokens_per_s']:.0f}",
            f"{r['no_cache']['tokens_per_s']:.0f}",
            f"{r['speedup']:.1f}×",
            f"{r['cache']['prefill_ms']:.1f}",
            f"{r['cache']['decode_ms_per_token']:.2f}",
            "yes" if r["same_tokens"] else "NO",
        ]
        for r in rows
    ]
    return "**KV cache** (batch 1, greedy, CPU):\n\n" + md_table(headers, cells)


def hf_table(rows: list[dict]) -> str:
    cells = [
        [
            r["batch"],
            f"{r['ours_tokens_per_s']:.0f}",
            f"{r['hf_tokens_per_s']:.0f}",
            f"{r['ratio_ours_over_hf']:.2f}",
            f"{100 * r['token_agreement']:.0f}%",
        ]
        for r in rows
    ]
    return (
        "**Our cached decode vs Hugging Face `generate()`** on the exported weights:\n\n"
        + md_table(["batch", "ours tok/s", "HF tok/s", "ours / HF", "same tokens"], cells)
    )


def memory_line(m: dict) -> str:
    longest = max((r for r in m["rows"] if r["batch"] == 8), key=lambda r: r["seq_len"])
    return (
        f"KV cache at batch 8 × {longest['seq_len']} tokens: {longest['tensor_bytes'] / 2**20:.1f} MiB "
        f"with GQA ({m['n_kv_head']} K/V heads) vs {longest['mha_bytes'] / 2**20:.1f} MiB with MHA "
        f"({m['n_head']}); formula = tensor bytes: {m['formula_matches_tensors']}."
    )


def bench_parts(b: dict, bench_dir: Path, report_dir: Path) -> list[str]:
    plots = " ".join(f"![{p}]({rel_link(bench_dir / p, report_dir)})" for p in b["plots"])
    return [
        cache_table(b["cache_vs_no_cache"]),
        hf_table(b["vs_hf_generate"]),
        memory_line(b["memory"]),
        plots,
    ]


def section(runs: Path) -> str | None:
    week, report_dir = runs / "week1", runs / "report"
    parts: list[str] = []
    for run in TRAINING_RUNS:
        path = week / run / "results.json"
        if path.exists():
            curve = rel_link(week / run / "loss_curve.png", report_dir)
            parts.append(training_part(read_json(path), curve))
    bpath = week / "bench" / "results.json"
    if bpath.exists():
        parts += bench_parts(read_json(bpath), week / "bench", report_dir)
    hf = week / "hf-model" / "config.json"
    if hf.exists():
        parts.append(
            f"Exported Hugging Face folder: [`{rel_link(hf.parent, runs.parent)}`]"
            f"({rel_link(hf.parent, report_dir)}) (served in week 2, fine-tuned in week 3)."
        )
    return "\n\n".join(parts) if parts else None
