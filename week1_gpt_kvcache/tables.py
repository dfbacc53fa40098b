"""Week 1's generated README tables (see common/docs.py): the numbers they show, and how."""

from __future__ import annotations

from common.docs import Table, register
from common.report import md_table


def training_numbers(r: dict) -> dict:
    keys = ("final_val_loss", "bigram_val_loss", "steps", "train_seconds", "params")
    return {k: r[k] for k in keys}


def training_table(n: dict) -> str:
    rows = [
        [
            "bigram baseline (best model that sees one previous token)",
            f"{n['bigram_val_loss']:.3f}",
        ],
        [
            f"our GPT ({n['params'] / 1e6:.2f}M parameters) after {n['steps']} steps, "
            f"{n['train_seconds']:.0f} s of training",
            f"**{n['final_val_loss']:.3f}**",
        ],
    ]
    return md_table(["", "validation loss (nats/token)"], rows)


def cache_numbers(r: dict) -> dict:
    keep = ("tokens_per_s", "decode_ms_per_token", "prefill_ms")
    rows = [
        {
            "new_tokens": row["new_tokens"],
            "cache": {k: row["cache"][k] for k in keep},
            "no_cache": {k: row["no_cache"][k] for k in keep},
            "speedup": row["speedup"],
            "same_tokens": row["same_tokens"],
        }
        for row in r["cache_vs_no_cache"]
    ]
    return {"rows": rows, "repeats": r["config"]["repeats"], "prompt_len": r["prompt_len"]}


def cache_table(n: dict) -> str:
    headers = ["new tokens", "with cache (tok/s)", "without cache (tok/s)", "speedup"]
    headers += ["decode ms/token: cache", "no cache", "same tokens"]
    rows = [
        [
            r["new_tokens"],
            f"{r['cache']['tokens_per_s']:.0f}",
            f"{r['no_cache']['tokens_per_s']:.0f}",
            f"{r['speedup']:.1f}×",
            f"{r['cache']['decode_ms_per_token']:.2f}",
            f"{r['no_cache']['decode_ms_per_token']:.2f}",
            "yes" if r["same_tokens"] else "**NO**",
        ]
        for r in n["rows"]
    ]
    note = (
        f"Prompt of {n['prompt_len']} tokens; each cell is the run with the median time of "
        f"{n['repeats']} (one run above 256 new tokens)."
    )
    return md_table(headers, rows) + "\n\n" + note


register(Table("week1-training", "week1", "week1/gpt-llama-bpe/results.json", training_numbers,
               training_table))  # fmt: skip
register(Table("week1-kv-cache", "week1", "week1/bench/results.json", cache_numbers,
               cache_table))  # fmt: skip
