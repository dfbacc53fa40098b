"""Week 1's section of the portfolio report (see common/report.py)."""

from __future__ import annotations

from pathlib import Path

from common.report import md_table, rel_link
from common.results import read_json


def section(runs: Path) -> str | None:
    week, report_dir = runs / "week1", runs / "report"
    parts: list[str] = []
    for run in ("gpt-llama-bpe", "gpt-gpt2-bpe", "gpt-llama-char", "gpt-gpt2-char"):
        path = week / run / "results.json"
        if not path.exists():
            continue
        r = read_json(path)
        parts.append(
            f"**GPT, {r['arch']} preset, {r['tokenizer']} tokenizer** ({r['params'] / 1e6:.2f}M parameters, "
            f"corpus: {r['corpus']}, {r['train_tokens']:,} training tokens): validation loss "
            f"**{r['final_val_loss']:.3f}** vs **{r['bigram_val_loss']:.3f}** for the bigram baseline, after "
            f"{r['steps']} steps in {r['train_seconds']:.0f} s on {r['environment']['device']}.\n\n"
            f"![loss]({rel_link(week / run / 'loss_curve.png', report_dir)})\n\n"
            f"Sample (temperature 0.8, top-k 50):\n\n```text\n{r['samples'][0][:400]}\n```"
        )
    bpath = week / "bench" / "results.json"
    if bpath.exists():
        b = read_json(bpath)
        rows = [
            [
                r["new_tokens"],
                f"{r['cache']['tokens_per_s']:.0f}",
                f"{r['no_cache']['tokens_per_s']:.0f}",
                f"{r['speedup']:.1f}×",
                f"{r['cache']['prefill_ms']:.1f}",
                f"{r['cache']['decode_ms_per_token']:.2f}",
                "yes" if r["same_tokens"] else "NO",
            ]
            for r in b["cache_vs_no_cache"]
        ]
        parts.append(
            "**KV cache** (batch 1, greedy, CPU):\n\n"
            + md_table(
                [
                    "new tokens",
                    "cache tok/s",
                    "no-cache tok/s",
                    "speedup",
                    "prefill ms",
                    "decode ms/token",
                    "same tokens",
                ],
                rows,
            )
        )
        hf_rows = [
            [
                r["batch"],
                f"{r['ours_tokens_per_s']:.0f}",
                f"{r['hf_tokens_per_s']:.0f}",
                f"{r['ratio_ours_over_hf']:.2f}",
                f"{100 * r['token_agreement']:.0f}%",
            ]
            for r in b["vs_hf_generate"]
        ]
        parts.append(
            "**Our cached decode vs Hugging Face `generate()`** on the exported weights:\n\n"
            + md_table(["batch", "ours tok/s", "HF tok/s", "ours / HF", "same tokens"], hf_rows)
        )
        m = b["memory"]
        longest = max((r for r in m["rows"] if r["batch"] == 8), key=lambda r: r["seq_len"])
        parts.append(
            f"KV cache at batch 8 × {longest['seq_len']} tokens: {longest['tensor_bytes'] / 2**20:.1f} MiB "
            f"with GQA ({m['n_kv_head']} K/V heads) vs {longest['mha_bytes'] / 2**20:.1f} MiB with MHA "
            f"({m['n_head']}); formula = tensor bytes: {m['formula_matches_tensors']}."
        )
        parts.append(
            " ".join(f"![{p}]({rel_link(week / 'bench' / p, report_dir)})" for p in b["plots"])
        )
    hf = week / "hf-model" / "config.json"
    if hf.exists():
        parts.append(
            f"Exported Hugging Face folder: [`{rel_link(hf.parent, runs.parent)}`]"
            f"({rel_link(hf.parent, report_dir)}) (served in week 2, fine-tuned in week 3)."
        )
    return "\n\n".join(parts) if parts else None
