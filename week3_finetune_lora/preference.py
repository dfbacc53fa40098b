"""Preference pairs and what DPO is meant to move: log-probability margins and near misses.

The behaviour DPO targets is measured directly: the margin log π(chosen) − log π(rejected) on
held-out pairs (> 0: the right answer wins), the exact match, and the rate of near misses
(answers of the right kind that are still wrong: the right digits in the wrong order, or a
valid label that is not the right one; each task names its own in tasks.py).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from common.plots import plt, save
from week3_finetune_lora.generation import generate_local
from week3_finetune_lora.scoring import evaluate_rows, near_miss_rate


def pairs(rows: list[dict]) -> list[dict]:
    """trl's preference format: {"prompt", "chosen", "rejected"} (standard, not chat)."""
    return [
        {"prompt": r["prompt"], "chosen": r["completion"], "rejected": r["rejected"]} for r in rows
    ]


@torch.no_grad()
def sequence_logprob(model, tok, prompts: list[str], completions: list[str]) -> torch.Tensor:
    """log π(completion + EOS | prompt) summed over the completion's tokens, per row: (N,)."""
    model.eval()
    out = []
    for p, c in zip(prompts, completions):
        p_ids = tok(p)["input_ids"]
        c_ids = tok(c)["input_ids"] + [tok.eos_token_id]
        ids = torch.tensor([p_ids + c_ids], device=model.device)  # (1, T)
        logits = model(ids).logits[0, :-1]  # (T-1, V): position t predicts token t+1
        logp = F.log_softmax(logits.float(), dim=-1)
        tgt = ids[0, 1:]  # (T-1,)
        lp = logp.gather(1, tgt[:, None])[:, 0]  # (T-1,)
        out.append(lp[len(p_ids) - 1 :].sum())  # only the completion's tokens
    return torch.stack(out)


def margins(model, tok, rows: list[dict]) -> torch.Tensor:
    """log π(chosen) − log π(rejected) per held-out pair: > 0 means the right answer wins."""
    prompts = [r["prompt"] for r in rows]
    return sequence_logprob(model, tok, prompts, [r["completion"] for r in rows]) - (
        sequence_logprob(model, tok, prompts, [r["rejected"] for r in rows])
    )


def behaviour(model, tok, rows: list[dict], n_new: int, task: str) -> dict:
    """Greedy exact match, near misses and log-prob margins of `model` on `rows`."""
    res = evaluate_rows(rows, lambda p: generate_local(model, tok, p, n_new))
    m = margins(model, tok, rows)
    return {
        "exact_match": res["exact_match"],
        "checks": res["checks"],
        "near_miss_rate": near_miss_rate(task, res),
        "margin_mean": float(m.mean()),
        "prefers_chosen": float((m > 0).float().mean()),
        "margins": m.tolist(),
    }


def _bars(ax, before: dict, after: dict) -> None:
    names = ["exact match", "near miss"]
    xs = range(len(names))
    for label, res, dx in (("SFT", before, -0.2), ("SFT + DPO", after, 0.2)):
        vals = [100 * res["exact_match"], 100 * res["near_miss_rate"]]
        ax.bar([x + dx for x in xs], vals, 0.4, label=label)
        for x, v in zip(xs, vals):
            ax.text(x + dx, v, f"{v:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("% of held-out prompts")
    ax.set_title("greedy answers")
    ax.legend()


def plot_before_after(before: dict, after: dict, path: Path, task: str) -> Path:
    """Left: histogram of log-prob margins (SFT vs DPO). Right: exact match and near misses."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.hist(before["margins"], bins=30, alpha=0.6, label="SFT (before DPO)")
    a.hist(after["margins"], bins=30, alpha=0.6, label="SFT + DPO")
    a.axvline(0, color="k", lw=0.8)
    a.set_xlabel("log π(chosen) − log π(rejected)")
    a.set_ylabel("held-out pairs")
    a.set_title(f"{task}: preference margin")
    a.legend()
    _bars(b, before, after)
    return save(fig, path)
