"""What speculative decoding buys, and where it stops paying: tokens/s with and without it.

    python -m week2_serving.engine.spec_bench                   # runs/week1/hf-model + hf-draft
    python -m week2_serving.engine.spec_bench --repeats 1 --concurrency 1 8   # quicker

One run, offline engine, greedy (so every configuration emits the same tokens): for each
workload (`repetitive`: templated code, where n-gram lookup shines; `random`: random token
ids) and each method (off, ngram, draft), at each concurrency c (c requests in flight: the
batch size), the output tokens/s over `repeats` runs (median and range), the speed-up over
`off` at the same c, and the measured mean acceptance length against the theory
(1 - alpha^(k+1)) / (1 - alpha) at the measured per-guess acceptance alpha.

Writes runs/week2/spec/results.json and spec_speedup.png (speed-up vs concurrency: where the
line drops under 1, the verify forward's extra rows cost more than the steps they save).
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.cli import parse
from common.plots import plt, save
from common.results import get_logger, runs_root, save_results
from common.timing import environment
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.sequence import SamplingParams
from week2_serving.engine.spec.config import SpecConfig
from week2_serving.engine.spec.metrics import theory_acceptance_length

log = get_logger("week2.spec_bench")
METHODS = ("off", "ngram", "draft")
WORKLOADS = ("repetitive", "random")


@dataclass
class SpecBenchConfig:
    """Tokens/s with and without speculative decoding, per proposer, workload and load."""

    model: str = field(default_factory=lambda: str(runs_root() / "week1" / "hf-model"))
    draft_model: str = field(default_factory=lambda: str(runs_root() / "week1" / "hf-draft"))
    num_speculative_tokens: int = 3  # k
    concurrency: list[int] = field(default_factory=lambda: [1, 8, 32])  # requests in flight
    prompt_len: int = 96  # tokens per prompt
    max_tokens: int = 128  # output tokens per request (EOS ignored: equal work everywhere)
    repeats: int = 5  # runs per cell (median and range reported)
    seed: int = 0  # prompts
    dtype: str = "float32"  # the engines' weights and KV cache (auto is bf16 on a BF16 CPU)
    threads: int = 1  # torch threads: one, as each engine of the week 2 bench gets one core

    def __post_init__(self) -> None:
        SpecConfig("ngram", self.num_speculative_tokens)  # same bounds as the engine's
        if not 1 <= self.threads <= 256:
            raise ValueError(f"threads={self.threads}: use 1..256")
        if not self.concurrency or not all(1 <= c <= 256 for c in self.concurrency):
            raise ValueError(f"concurrency={self.concurrency}: use values in 1..256")
        for name, top in (("prompt_len", 512), ("max_tokens", 512), ("repeats", 20)):
            if not 1 <= getattr(self, name) <= top:
                raise ValueError(f"{name}={getattr(self, name)}: use 1..{top}")


def prompts(workload: str, n: int, length: int, tok, seed: int) -> list[list[int]]:
    """n prompts of `length` tokens: templated code (repeats itself) or random ids."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if workload == "random":
            out.append([rng.randrange(tok.vocab_size) for _ in range(length)])
            continue
        lines = [f"def get_{w}(self):\n    return self.{w}\n" for w in ("name", "size", "value")]
        text = f"class Item{i}:\n" + "".join(lines) * 8
        ids = tok.encode(text)
        out.append((ids * (length // max(1, len(ids)) + 1))[:length])
    return out


def run_cell(engine: LLMEngine, batch: list[list[int]], max_tokens: int) -> tuple[float, int]:
    """Seconds and output tokens to finish every prompt of `batch` at once."""
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    start = time.perf_counter()
    outs = engine.generate(batch, params, use_tqdm=False)
    return time.perf_counter() - start, sum(len(o.token_ids) for o in outs)


def make_engine(cfg: SpecBenchConfig, method: str, c: int, tok) -> LLMEngine:
    k = cfg.num_speculative_tokens
    spec = {
        "off": None,
        "ngram": SpecConfig("ngram", k),
        "draft": SpecConfig("draft", k, draft_model=cfg.draft_model),
    }[method]
    ecfg = EngineConfig(
        model=cfg.model, max_num_seqs=c, speculative=spec, device="cpu", dtype=cfg.dtype,
        kv_cache_memory=0.125,
    )  # fmt: skip
    return LLMEngine(ecfg, tok)


def measure(cfg: SpecBenchConfig, workload: str, c: int, tok) -> list[dict]:
    """Every method at concurrency c, its repeats interleaved (off, ngram, draft, off, ...) so
    that a machine that gets busier or quieter during the run touches every method alike."""
    engines = {m: make_engine(cfg, m, c, tok) for m in METHODS}
    batch = prompts(workload, c, cfg.prompt_len, tok, cfg.seed)
    for engine in engines.values():
        run_cell(engine, batch[:1], 4)  # warm-up
    rates: dict[str, list[float]] = {m: [] for m in METHODS}
    tokens: dict[str, int] = {}
    for _ in range(cfg.repeats):
        for m, engine in engines.items():
            seconds, tokens[m] = run_cell(engine, batch, cfg.max_tokens)
            rates[m].append(tokens[m] / seconds)
    rows = []
    for m, engine in engines.items():
        row = {"method": m, "workload": workload, "concurrency": c, "tokens": tokens[m]}
        r = rates[m]
        row |= {"tok_s": statistics.median(r), "tok_s_min": min(r), "tok_s_max": max(r)}
        if engine.spec is not None:
            s = engine.spec.metrics.summary()
            row["spec"] = s
            if s["alpha"] is not None:
                row["theory_acceptance_length"] = theory_acceptance_length(
                    s["alpha"], cfg.num_speculative_tokens
                )
        log.info("%s %s c%d: %.1f tok/s", workload, m, c, row["tok_s"])
        rows.append(row)
    return rows


def add_speedups(rows: list[dict]) -> None:
    base = {(r["workload"], r["concurrency"]): r["tok_s"] for r in rows if r["method"] == "off"}
    for r in rows:
        r["speedup"] = r["tok_s"] / base[(r["workload"], r["concurrency"])]


def plot_speedup(rows: list[dict], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method in METHODS[1:]:
        for workload in WORKLOADS:
            pts = [
                (r["concurrency"], r["speedup"])
                for r in rows
                if r["method"] == method and r["workload"] == workload
            ]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"{method}, {workload}")
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency (requests in flight)")
    ax.set_ylabel("speed-up over no speculation")
    ax.set_title("speculative decoding: speed-up vs load")
    ax.grid(alpha=0.3)
    ax.legend()
    return save(fig, path)


def main(cfg: SpecBenchConfig) -> dict:
    from transformers import AutoTokenizer

    torch.set_num_threads(cfg.threads)
    tok = AutoTokenizer.from_pretrained(cfg.model)
    rows = [r for w in WORKLOADS for c in cfg.concurrency for r in measure(cfg, w, c, tok)]
    add_speedups(rows)
    results = {"config": vars(cfg), "rows": rows, "environment": environment()}
    path = save_results("week2", "spec", results)
    plot_speedup(rows, path.parent / "spec_speedup.png")
    for r in rows:
        acc = r.get("spec", {}).get("mean_acceptance_length")
        theory = r.get("theory_acceptance_length")
        log.info(
            "%-10s %-5s c%-3d %7.1f tok/s  x%.2f  accept len %s (theory %s)",
            r["workload"], r["method"], r["concurrency"], r["tok_s"], r["speedup"],
            "-" if acc is None else f"{acc:.2f}", "-" if theory is None else f"{theory:.2f}",
        )  # fmt: skip
    return results


if __name__ == "__main__":
    main(parse(SpecBenchConfig, description=__doc__))
