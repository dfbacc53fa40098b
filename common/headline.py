"""The portfolio's report card: the numbers that matter, each beside its target.

One `Headline` per number: which results file it comes from (relative to runs/), how to read
the value, how to print it, and the target with its check. A missing results file gives a
row saying which command produces it, never a made-up number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.report import md_table
from common.results import read_json


@dataclass(frozen=True)
class Headline:
    label: str
    run: str  # results file relative to runs/
    how: str  # the command that produces it
    value: Callable[[dict], str]  # results -> the measured number, printed
    target: Callable[[dict], tuple[str, bool]]  # results -> (target text, met?)


def _mnist(r: dict) -> tuple[str, bool]:
    full = r["data"]["source"] == "torchvision"
    goal = 0.99 if full else 0.975
    return f"≥ {100 * goal:.1f}% ({'full MNIST' if full else 'offline 1,000 images'})", r[
        "test_accuracy"
    ] >= goal


def _kv(r: dict) -> dict:
    return r["cache_vs_no_cache"][-1]


def _lora_min(r: dict) -> float:
    return min(t["adapter_exact"] for t in r["tasks"])


def _engine(r: dict, key: str) -> float:
    return r["summary"][key]


HEADLINES = [
    Headline(
        "MNIST CNN test accuracy (week 0)",
        "week0/mnist-cnn/results.json",
        "make week0",
        lambda r: f"{100 * r['test_accuracy']:.1f}%",
        _mnist,
    ),
    Headline(
        "GPT validation loss (week 1)",
        "week1/gpt-llama-bpe/results.json",
        "make week1",
        lambda r: f"{r['final_val_loss']:.3f}",
        lambda r: (
            f"< {r['bigram_val_loss']:.3f} (bigram)",
            r["final_val_loss"] < r["bigram_val_loss"],
        ),
    ),
    Headline(
        "KV-cache decode speed-up, longest run (week 1)",
        "week1/bench/results.json",
        "make week1",
        lambda r: f"{_kv(r)['speedup']:.1f}× at {_kv(r)['new_tokens']} tokens",
        lambda r: ("≥ 2×, same tokens", _kv(r)["speedup"] >= 2 and _kv(r)["same_tokens"]),
    ),
    Headline(
        "vLLM CPU output tok/s at concurrency 32 (week 2)",
        "week2/engine/results.json",
        "make week2-engine",
        lambda r: f"{r['cells']['vllm/c32']['output_throughput']:.0f}",
        lambda r: (
            f"≥ 4× its c1 ({4 * r['cells']['vllm/c1']['output_throughput']:.0f})",
            r["cells"]["vllm/c32"]["output_throughput"]
            >= 4 * r["cells"]["vllm/c1"]["output_throughput"],
        ),
    ),
    Headline(
        "Our engine / vLLM throughput at c32 (week 2)",
        "week2/engine/results.json",
        "make week2-engine",
        lambda r: f"{_engine(r, 'ours_vs_vllm')['c32']:.2f}",
        lambda r: ("≥ 0.50", _engine(r, "ours_vs_vllm")["c32"] >= 0.5),
    ),
    Headline(
        "Prefix caching: TTFT saved on a shared prefix (week 2)",
        "week2/engine/results.json",
        "make week2-engine",
        lambda r: f"{100 * _engine(r, 'prefix_caching_ttft_cut'):.0f}%",
        lambda r: ("≥ 50%", _engine(r, "prefix_caching_ttft_cut") >= 0.5),
    ),
    Headline(
        "LoRA exact match, worst task (week 3)",
        "week3/summary/results.json",
        "make week3",
        lambda r: f"{100 * _lora_min(r):.0f}%",
        lambda r: ("≥ 90% (base < 10%)", _lora_min(r) >= 0.9),
    ),
    Headline(
        "DPO reward accuracy, held out (week 3)",
        "week3/summary/results.json",
        "make week3",
        lambda r: f"{100 * r['dpo'][0]['reward_accuracy']:.0f}%",
        lambda r: (
            "≥ 90%, exact match within 2 points of SFT",
            r["dpo"][0]["reward_accuracy"] >= 0.9
            and r["dpo"][0]["exact_match_change_points"] >= -2,
        ),
    ),
]


def headline_rows(runs: Path, headlines: list[Headline] = HEADLINES) -> list[list[str]]:
    """[number, measured, target, met] per headline; a missing or unreadable file says so."""
    rows = []
    for h in headlines:
        path = runs / h.run
        if not path.is_file():
            rows.append([h.label, f"not run (`{h.how}`)", "", "—"])
            continue
        r = read_json(path)
        try:
            value, (target, met) = h.value(r), h.target(r)
        except (KeyError, IndexError, TypeError, ValueError) as e:
            rows.append([h.label, f"missing in {h.run} ({type(e).__name__}: {e})", "", "—"])
            continue
        rows.append([h.label, f"**{value}**", target, "yes" if met else "**no**"])
    return rows


def headline_table(runs: Path, headlines: list[Headline] = HEADLINES) -> str:
    return md_table(["number", "measured", "target", "met"], headline_rows(runs, headlines))
