"""What an 8-bit KV cache buys and costs: capacity, throughput and quality against float32.

    python -m week2_serving.engine.kv_bench         # runs/week1/hf-model (`make week1` makes it)
    python -m week2_serving.engine.kv_bench --model DIR --val-data DATA/val.bin --repeats 5

Every cache gets the same KV memory (--kv-memory-mib):
1. capacity: the sequences of --context-len tokens it holds at once, from the block math
   (blocks // blocks per sequence), confirmed by running the engine with that many sequences
   (no preemption) and one more (preemption);
2. throughput: output tokens/s of the offline engine at the concurrency where the float32
   cache starts preempting (its capacity + 1), float32 vs int8, repeats interleaved;
3. quality: perplexity on week 1's validation tokens, teacher-forced through our engine's
   forward pass (each window is one prefill whose queries read every key and value back from
   the pool, quantized, exactly as decode steps would), top-1 agreement of those logits with
   float32's, and greedy agreement (share of identical tokens, prompts x tokens).

Caches: fp32 (float32 weights and cache), bf16 (bfloat16 weights and cache), int8 and fp8
(float32 weights, 8-bit cache). Writes runs/week2/<out>/results.json and kv_quant.png.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from common.cli import parse
from common.plots import plt, save
from common.results import get_logger, run_dir, runs_root, save_results
from common.timing import environment
from week2_serving.engine.attention import plan_groups
from week2_serving.engine.kv_quant import FORMATS
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.model_runner import ModelRunner, StepInputs
from week2_serving.engine.sequence import SamplingParams

log = get_logger("week2.kv_bench")
CACHES = {  # name -> (weights' dtype, --kv-cache-dtype)
    "fp32": ("float32", "auto"),
    "bf16": ("bfloat16", "auto"),
    "int8": ("float32", "int8"),
    "fp8": ("float32", "fp8"),
}


@dataclass
class KVBenchConfig:
    """Compare KV cache dtypes at a fixed KV memory: capacity, throughput, perplexity."""

    # the model: an HF folder; default runs/week1/hf-model (made by `make week1`)
    model: str = field(default_factory=lambda: str(runs_root() / "week1" / "hf-model"))
    # week 1's validation tokens (uint16); none: runs/week1/data-bpe/val.bin
    val_data: str | None = None
    caches: list[str] = field(default_factory=lambda: list(CACHES))  # fp32 first: the reference
    kv_memory_mib: float = 2.0  # KV memory every cache gets
    context_len: int = 128  # tokens per sequence (prompt + output) in capacity and throughput
    prompt_len: int = 64  # of those, prompt tokens
    block_size: int = 16  # tokens per KV block
    repeats: int = 3  # throughput runs per cache (interleaved)
    ppl_windows: int = 8  # validation windows for perplexity
    ppl_window_len: int = 256  # tokens per window (at most the model's context)
    agree_prompts: int = 8  # greedy agreement: prompts ...
    agree_tokens: int = 32  # ... x generated tokens
    threads: int = 2  # torch threads
    out: str = "kv-quant"  # run name: runs/week2/<out>/

    def __post_init__(self) -> None:
        bad = [c for c in self.caches if c not in CACHES]
        if bad or not self.caches or self.caches[0] != "fp32":
            raise ValueError(f"caches={self.caches}: fp32 first, then any of {', '.join(CACHES)}")
        for name in ("context_len", "prompt_len", "block_size", "repeats", "ppl_windows"):
            value = getattr(self, name)
            if isinstance(value, bool) or not 1 <= value <= 1 << 20:
                raise ValueError(f"{name}={value!r}: use an integer in 1..{1 << 20}")
        for name in ("ppl_window_len", "agree_prompts", "agree_tokens", "threads"):
            if not 1 <= getattr(self, name) <= 1 << 20:
                raise ValueError(f"{name}={getattr(self, name)!r}: use 1..{1 << 20}")
        if self.prompt_len >= self.context_len:
            raise ValueError(f"prompt_len={self.prompt_len} must be < context_len")
        if not (math.isfinite(self.kv_memory_mib) and 0 < self.kv_memory_mib <= 1 << 20):
            raise ValueError(f"kv_memory_mib={self.kv_memory_mib}: use a finite number > 0")


def make_engine(cfg: KVBenchConfig, cache: str, tokenizer) -> LLMEngine:
    dtype, kv = CACHES[cache]
    if kv in ("int8", "fp8") and kv not in FORMATS:
        raise ValueError(f"{cache}: this torch has no {kv} format")
    ecfg = EngineConfig(
        model=cfg.model,
        block_size=cfg.block_size,
        kv_cache_memory=cfg.kv_memory_mib / 1024,
        max_num_seqs=4096,  # only memory bounds the batch
        enable_prefix_caching=False,  # every sequence pays for its own blocks
        max_num_waiting=0,
        device="cpu",
        dtype=dtype,
        kv_cache_dtype=kv,
    )
    return LLMEngine(ecfg, tokenizer)


def run_load(eng: LLMEngine, n: int, cfg: KVBenchConfig, seed: int = 0) -> dict:
    """n distinct random prompts of prompt_len tokens, each generating up to context_len."""
    g = torch.Generator().manual_seed(seed)
    vocab = eng.runner.cfg.vocab_size
    prompts = torch.randint(0, vocab, (n, cfg.prompt_len), generator=g).tolist()
    params = SamplingParams(max_tokens=cfg.context_len - cfg.prompt_len, ignore_eos=True)
    before, start, peak = eng.scheduler.num_preemptions, time.perf_counter(), 0
    seqs = [eng.add_request(p, params) for p in prompts]
    while eng.has_unfinished():
        eng.step()
        peak = max(peak, len(eng.scheduler.running))
    seconds = time.perf_counter() - start
    tokens = sum(s.num_output_tokens for s in seqs)
    return {
        "sequences": n,
        "preemptions": eng.scheduler.num_preemptions - before,
        "peak_running": peak,
        "output_tokens": tokens,
        "seconds": seconds,
        "output_tok_s": tokens / seconds,
    }


def capacity(eng: LLMEngine, cfg: KVBenchConfig) -> dict:
    """Sequences of context_len tokens the pool holds: block math, then two engine runs."""
    blocks = eng.block_manager.num_blocks
    per_seq = -(-cfg.context_len // cfg.block_size)
    predicted = blocks // per_seq
    at = run_load(eng, predicted, cfg) if predicted else {"preemptions": 0}
    over = run_load(eng, predicted + 1, cfg, seed=1)
    return {
        "blocks": blocks,
        "bytes_per_block": ModelRunner.bytes_per_block(
            eng.runner.cfg, cfg.block_size, eng.runner.dtype, eng.config.kv_cache_dtype
        ),
        "max_sequences": predicted,
        "fits_at_max": at["preemptions"] == 0,
        "preempts_at_max_plus_1": over["preemptions"] > 0,
    }


def throughput(engines: dict, cfg: KVBenchConfig, n: int) -> dict:
    """Output tok/s of each cache at n sequences, repeats interleaved; median and range."""
    runs: dict[str, list[dict]] = {c: [] for c in engines}
    for r in range(cfg.repeats):
        for cache, eng in engines.items():
            runs[cache].append(run_load(eng, n, cfg, seed=100 + r))
    out = {"sequences": n}
    for cache, rs in runs.items():
        tps = [x["output_tok_s"] for x in rs]
        out[cache] = {
            "median_tok_s": statistics.median(tps),
            "min_tok_s": min(tps),
            "max_tok_s": max(tps),
            "preemptions": [x["preemptions"] for x in rs],
        }
    out["int8_vs_fp32"] = out["int8"]["median_tok_s"] / out["fp32"]["median_tok_s"]
    return out


@torch.inference_mode()
def teacher_forced_logits(eng: LLMEngine, ids: list[int]) -> torch.Tensor:
    """Logits (W, V) of every position of one window: one prefill through the runner, its
    K/V written to blocks 0.. of an idle pool and read back (dequantized) by attention."""
    r, bs, W = eng.runner, eng.runner.block_size, len(ids)
    table = list(range(-(-W // bs)))
    if len(table) > r.num_blocks or eng.scheduler.has_work():
        raise ValueError(f"a {W}-token window needs {len(table)} free blocks of {r.num_blocks}")
    rows = torch.arange(W, device=r.device)
    inputs = StepInputs(
        ids=torch.tensor(ids, device=r.device),
        positions=rows,
        slot_mapping=rows,  # blocks 0, 1, ... in order: slot p for position p
        groups=plan_groups([], [(table, W, W, 0)], bs, r.device, r.dtype),
        sample_rows=rows,
    )
    return r.forward(inputs).float()


def val_tokens(cfg: KVBenchConfig, vocab: int) -> np.ndarray:
    path = Path(cfg.val_data or runs_root() / "week1" / "data-bpe" / "val.bin")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: run `python -m week1_gpt_kvcache.prepare` (make week1)")
    ids = np.fromfile(path, dtype=np.uint16).astype(np.int64)
    if ids.size == 0 or int(ids.max()) >= vocab:
        raise ValueError(f"{path}: ids outside the model's vocabulary {vocab}; another tokenizer?")
    return ids


def quality(engines: dict, cfg: KVBenchConfig, ids: np.ndarray) -> dict:
    """Perplexity and top-1 agreement (teacher-forced), greedy agreement, per cache vs fp32."""
    W = min(cfg.ppl_window_len, next(iter(engines.values())).max_model_len)
    starts = np.linspace(0, max(0, len(ids) - W - 1), cfg.ppl_windows).astype(int)
    windows = [ids[s : s + W].tolist() for s in starts]
    prompts = [w[:16] for w in windows[: cfg.agree_prompts]]
    prompts += [ids[i * 97 : i * 97 + 16].tolist() for i in range(cfg.agree_prompts - len(prompts))]
    greedy = SamplingParams(max_tokens=cfg.agree_tokens, temperature=0.0, ignore_eos=True)
    logits, tokens, out = {}, {}, {}
    for cache, eng in engines.items():
        logits[cache] = [teacher_forced_logits(eng, w) for w in windows]
        tokens[cache] = [o.token_ids for o in eng.generate(prompts, greedy, use_tqdm=False)]
        nll = [
            F.cross_entropy(lg[:-1], torch.tensor(w[1:])) for lg, w in zip(logits[cache], windows)
        ]
        ref_l, ref_t = logits["fp32"], tokens["fp32"]
        top1 = [(a.argmax(-1) == b.argmax(-1)).float().mean() for a, b in zip(logits[cache], ref_l)]
        same = [x == y for a, b in zip(tokens[cache], ref_t) for x, y in zip(a, b)]
        out[cache] = {
            "perplexity": math.exp(float(torch.stack(nll).mean())),
            "top1_agreement": float(torch.stack(top1).mean()),
            "greedy_agreement": sum(same) / len(same),
        }
    out["window_len"], out["windows"] = W, len(windows)
    out["greedy"] = {"prompts": len(prompts), "tokens": cfg.agree_tokens}
    return out


def plot(results: dict, path: Path) -> Path:
    caches = list(results["capacity"])
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    ax[0].bar(caches, [results["capacity"][c]["max_sequences"] for c in caches])
    ax[0].set_title(f"sequences held ({results['config']['kv_memory_mib']} MiB KV)")
    tp = results["throughput"]
    meds = [tp[c]["median_tok_s"] for c in ("fp32", "int8")]
    err = [[m - tp[c]["min_tok_s"] for m, c in zip(meds, ("fp32", "int8"))]]
    err += [[tp[c]["max_tok_s"] - m for m, c in zip(meds, ("fp32", "int8"))]]
    ax[1].bar(["fp32", "int8"], meds, yerr=err, capsize=4)
    ax[1].set_title(f"output tok/s at {tp['sequences']} sequences")
    ax[2].bar(caches, [results["quality"][c]["perplexity"] for c in caches])
    ax[2].set_title("validation perplexity (teacher-forced)")
    fig.tight_layout()
    return save(fig, path)


def run(cfg: KVBenchConfig) -> dict:
    from transformers import AutoTokenizer

    torch.set_num_threads(cfg.threads)
    tok = AutoTokenizer.from_pretrained(cfg.model)
    engines = {c: make_engine(cfg, c, tok) for c in cfg.caches}
    caps = {c: capacity(e, cfg) for c, e in engines.items()}
    log.info("capacity: %s", {c: v["max_sequences"] for c, v in caps.items()})
    n = caps["fp32"]["max_sequences"] + 1  # where the float32 cache starts preempting
    pair = {c: engines[c] for c in ("fp32", "int8") if c in engines}
    tp = throughput(pair, cfg, n) if len(pair) == 2 else {}
    ids = val_tokens(cfg, engines["fp32"].runner.cfg.vocab_size)
    q = quality(engines, cfg, ids)
    return {"config": vars(cfg), "capacity": caps, "throughput": tp, "quality": q}


def main(cfg: KVBenchConfig) -> dict:
    results = run(cfg)
    results["environment"] = environment()
    out = run_dir("week2", cfg.out)
    results["plot"] = str(plot(results, out / "kv_quant.png")) if results["throughput"] else None
    print(save_results("week2", cfg.out, results))
    return results


if __name__ == "__main__":
    main(parse(KVBenchConfig, description=__doc__))
