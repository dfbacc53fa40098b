"""What the KV cache buys, measured in one run on one machine.

    python -m week1_gpt_kvcache.bench                      # the default run's model
    python -m week1_gpt_kvcache.bench --lengths 64 128 --repeats 1

1. Cache vs no cache at batch 1 over generation lengths: tokens/s, prefill and decode time
   separately, and the time of each step against its position (O(T) vs O(1)-ish per token).
2. KV-cache bytes: the formula 2·layers·n_kv_head·head_dim·bytes·T·B against the bytes of
   the allocated tensors, and multi-head (n_kv_head = n_head) vs grouped-query attention.
3. Our cached decode vs Hugging Face `generate()` on the same weights (the exported folder),
   greedy, at batch 1 and batch 8, with a check that both produce the same tokens.
Writes runs/week1/bench/results.json and PNG plots.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from common.cli import parse
from common.device import pick_device, synchronize
from common.plots import plt, save
from common.results import get_logger, run_dir, runs_root, save_results
from common.timing import environment
from week1_gpt_kvcache.checkpoint import load_model_and_tokenizer
from week1_gpt_kvcache.corpus import data_dir, load_tokens
from week1_gpt_kvcache.generate import SamplingParams, generate
from week1_gpt_kvcache.hf_convert import to_hf_model
from week1_gpt_kvcache.kvcache import KVCache, kv_cache_bytes
from week1_gpt_kvcache.model import GPT

log = get_logger("week1.bench")


@dataclass
class BenchConfig:
    """Measure the KV cache: speed, memory, and our decode against Hugging Face generate()."""

    checkpoint: str | None = None  # None = runs/week1/gpt-llama-bpe/checkpoint.pt
    hf_dir: str | None = None  # None = runs/week1/hf-model (converted in memory if absent)
    lengths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])  # new tokens per run
    prompt_len: int = 16  # prompt tokens, cut from the validation split
    hf_new_tokens: int = 128  # new tokens in the comparison with HF generate()
    hf_batches: list[int] = field(default_factory=lambda: [1, 8])  # batch sizes of that comparison
    repeats: int = 3  # timed runs per measurement (the median is kept), after one warm-up
    device: str = "cpu"  # auto, cpu, cuda, cuda:N or mps

    def __post_init__(self) -> None:
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"lengths must be positive, got {self.lengths}")
        if not self.hf_batches or min(self.hf_batches) < 1:
            raise ValueError(f"hf_batches must be positive, got {self.hf_batches}")
        for name in ("repeats", "prompt_len", "hf_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")


def median_run(fn, repeats: int):
    """Run once to warm up, then `repeats` times; return the run with the median total time."""
    fn()
    runs = sorted((fn() for _ in range(repeats)), key=lambda r: r[0])
    return runs[len(runs) // 2]


def prompts_from_val(n: int, length: int) -> list[list[int]]:
    val = load_tokens(data_dir("bpe"), "val")
    step = max(1, (len(val) - length) // n)
    return [val[i * step : i * step + length].tolist() for i in range(n)]


def bench_cache(model: GPT, prompt: list[int], cfg: BenchConfig) -> list[dict]:
    rows = []
    for n in cfg.lengths:
        if cfg.prompt_len + n > model.cfg.block_size:
            log.warning(
                "skipping length %d: prompt + new tokens exceed block_size %d",
                n,
                model.cfg.block_size,
            )
            continue
        params = SamplingParams(max_tokens=n)
        row = {"new_tokens": n}
        for name, use_cache in (("cache", True), ("no_cache", False)):

            def once(use_cache=use_cache, params=params):
                t0 = time.perf_counter()
                out = generate(model, [prompt], params, use_cache=use_cache, record_step_times=True)
                return time.perf_counter() - t0, out

            total, out = median_run(once, cfg.repeats if n <= 256 else 1)
            row[name] = {
                "seconds": total,
                "tokens_per_s": n / total,
                "prefill_ms": 1e3 * out.prefill_seconds,
                "decode_ms_per_token": 1e3 * out.decode_seconds / max(1, n - 1),
                "step_ms": [round(1e3 * s, 3) for s in out.step_seconds],
                "tokens": out.tokens[0],
            }
        row["speedup"] = row["no_cache"]["seconds"] / row["cache"]["seconds"]
        row["same_tokens"] = row["cache"].pop("tokens") == row["no_cache"].pop("tokens")
        log.info(
            "%4d new tokens: cache %7.1f tok/s  no cache %7.1f tok/s  speedup %.1fx  same tokens: %s",
            n,
            row["cache"]["tokens_per_s"],
            row["no_cache"]["tokens_per_s"],
            row["speedup"],
            row["same_tokens"],
        )
        rows.append(row)
    return rows


def bench_memory(model: GPT, lengths: list[int]) -> dict:
    c = model.cfg
    bpe = model.lm_head.weight.element_size()
    rows = []
    for T in sorted({*lengths, c.block_size}):
        for B in (1, 8):
            formula = kv_cache_bytes(c.n_layer, c.n_kv_head, c.head_dim, T, B, bpe)
            actual = KVCache(
                c.n_layer, B, c.n_kv_head, T, c.head_dim, dtype=model.lm_head.weight.dtype
            ).allocated_bytes
            mha = kv_cache_bytes(c.n_layer, c.n_head, c.head_dim, T, B, bpe)
            rows.append(
                {
                    "seq_len": T,
                    "batch": B,
                    "formula_bytes": formula,
                    "tensor_bytes": actual,
                    "mha_bytes": mha,
                    "gqa_saving": mha / formula,
                }
            )
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    return {
        "n_layer": c.n_layer,
        "n_head": c.n_head,
        "n_kv_head": c.n_kv_head,
        "head_dim": c.head_dim,
        "bytes_per_element": bpe,
        "weight_bytes": weights,
        "rows": rows,
        "formula_matches_tensors": all(r["formula_bytes"] == r["tensor_bytes"] for r in rows),
    }


def load_hf(cfg: BenchConfig, model: GPT, eos_id):
    from transformers import AutoModelForCausalLM

    folder = Path(cfg.hf_dir) if cfg.hf_dir else runs_root() / "week1" / "hf-model"
    if (folder / "config.json").exists():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval(), str(folder)
    log.warning(
        "%s not found: converting the checkpoint in memory (run the export for the real folder)",
        folder,
    )
    return to_hf_model(model, eos_id), "converted in memory"


def bench_vs_hf(model: GPT, hf, prompts: list[list[int]], cfg: BenchConfig, device) -> list[dict]:
    rows = []
    n = cfg.hf_new_tokens
    for B in cfg.hf_batches:
        batch = prompts[:B]
        ids = torch.tensor(batch, device=device)

        def ours(batch=batch):
            synchronize(device)
            t0 = time.perf_counter()
            out = generate(model, batch, SamplingParams(max_tokens=n))
            return time.perf_counter() - t0, out.tokens

        @torch.inference_mode()
        def theirs(ids=ids):
            synchronize(device)
            t0 = time.perf_counter()
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                min_new_tokens=n,
                do_sample=False,
                pad_token_id=0,
            )
            synchronize(device)
            return time.perf_counter() - t0, out[:, ids.shape[1] :].tolist()

        t_ours, tok_ours = median_run(ours, cfg.repeats)
        t_hf, tok_hf = median_run(theirs, cfg.repeats)
        agree = sum(a == b for ra, rb in zip(tok_ours, tok_hf) for a, b in zip(ra, rb)) / (B * n)
        rows.append(
            {
                "batch": B,
                "new_tokens": n,
                "ours_tokens_per_s": B * n / t_ours,
                "hf_tokens_per_s": B * n / t_hf,
                "ratio_ours_over_hf": t_hf / t_ours,
                "token_agreement": agree,
            }
        )
        log.info(
            "batch %d: ours %.0f tok/s, HF generate %.0f tok/s, ratio %.2f, same tokens %.1f%%",
            B,
            B * n / t_ours,
            B * n / t_hf,
            t_hf / t_ours,
            100 * agree,
        )
    return rows


def plot_all(cache_rows, memory, out: Path) -> list[str]:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["new_tokens"] for r in cache_rows]
    for name in ("cache", "no_cache"):
        axes[0].plot(
            xs,
            [r[name]["tokens_per_s"] for r in cache_rows],
            marker="o",
            label=name.replace("_", " "),
        )
    axes[0].set(
        xscale="log",
        yscale="log",
        xlabel="new tokens (batch 1)",
        ylabel="tokens / s",
        title="Generation throughput",
    )
    longest = cache_rows[-1]
    for name in ("cache", "no_cache"):
        ms = longest[name]["step_ms"][1:]
        axes[1].plot(range(2, len(ms) + 2), ms, label=name.replace("_", " "), lw=1)
    axes[1].set(
        xlabel="token position (after the prompt)",
        ylabel="ms for this token",
        title=f"Cost of each new token ({longest['new_tokens']} tokens)",
    )
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    save(fig, out / "kv_cache_speed.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = [r for r in memory["rows"] if r["batch"] == 8]
    ax.plot(
        [r["seq_len"] for r in rows],
        [r["mha_bytes"] / 2**20 for r in rows],
        marker="o",
        label=f"MHA ({memory['n_head']} K/V heads)",
    )
    ax.plot(
        [r["seq_len"] for r in rows],
        [r["tensor_bytes"] / 2**20 for r in rows],
        marker="o",
        label=f"GQA ({memory['n_kv_head']} K/V heads)",
    )
    ax.axhline(memory["weight_bytes"] / 2**20, color="gray", ls="--", label="model weights")
    ax.set(xlabel="sequence length", ylabel="MiB", title="KV-cache size at batch 8 (fp32)")
    ax.grid(alpha=0.3)
    ax.legend()
    save(fig, out / "kv_cache_memory.png")
    return ["kv_cache_speed.png", "kv_cache_memory.png"]


def main(cfg: BenchConfig) -> dict:
    device = pick_device(cfg.device)
    model, tok = load_model_and_tokenizer(cfg.checkpoint, device)
    prompts = prompts_from_val(max(cfg.hf_batches), cfg.prompt_len)
    log.info(
        "model: %s, %.2fM params; %d threads",
        model.cfg.arch,
        model.num_params() / 1e6,
        torch.get_num_threads(),
    )
    cache_rows = bench_cache(model, prompts[0], cfg)
    memory = bench_memory(model, cfg.lengths)
    hf, hf_source = load_hf(cfg, model, tok.eos_id)
    hf_rows = bench_vs_hf(model, hf.to(device), prompts, cfg, device)
    out = run_dir("week1", "bench")
    plots = plot_all(cache_rows, memory, out)
    results = {
        "model_config": model.cfg.to_dict(),
        "params": model.num_params(),
        "prompt_len": cfg.prompt_len,
        "cache_vs_no_cache": cache_rows,
        "memory": memory,
        "vs_hf_generate": hf_rows,
        "hf_model": hf_source,
        "config": asdict(cfg),
        "plots": plots,
        "environment": environment(device),
    }
    save_results("week1", "bench", results)
    return results


if __name__ == "__main__":
    main(parse(BenchConfig, description=__doc__))
