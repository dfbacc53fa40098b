"""Our engine on a GPU: output tokens/s against HF `generate`, eager against CUDA graphs.

    python -m week2_serving.engine.gpu_bench                     # Qwen2.5-0.5B's shape, bf16
    python -m week2_serving.engine.gpu_bench --max-tokens 64 --repeats 3 --batches 1 32
    bash scripts/gpu_check.sh     # a GPU lent for a few minutes: CUDA tests, then this bench

The model has random weights of a real model's shape (default: Qwen2.5-0.5B, tied embeddings),
built in code from a transformers config: nothing is downloaded. Token ids go in directly
(random prompts of --prompt-len), and every request generates exactly --max-tokens tokens
(stop tokens ignored), so all three run the same work:

- hf: `model.generate(ids, do_sample=False)` on the batch (HF's dynamic cache, SDPA, eager);
- engine-eager: our engine with --enforce-eager (paged KV cache, bucketed decode attention);
- engine-graphs: our engine with decode steps replayed from CUDA graphs (cuda_graphs.py).

Each (implementation, batch) is timed --repeats times, interleaved (rep 1 of all, rep 2 of
all, ...), after one untimed warm-up (which also captures the graphs). Output tok/s =
batch x max_tokens / seconds, the prefill included, as a client sees it. Writes
runs/week2/<out>/results.json with median [min-max] per cell and the environment. Needs CUDA;
`measure(config, "cpu")` runs the same code on CPU for the tests (graphs are off there).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from common.cli import parse
from common.device import synchronize
from common.results import get_logger, save_results
from common.timing import environment
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.sequence import SamplingParams

log = get_logger("week2.gpu_bench")
IMPLS = ("hf", "engine-eager", "engine-graphs")


@dataclass
class GpuBenchConfig:
    """Engine vs HF generate tokens/s on CUDA, eager vs CUDA graphs, random weights."""

    hidden_size: int = 896  # the model's shape; defaults: Qwen2.5-0.5B's
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    intermediate_size: int = 4864
    vocab_size: int = 151936
    batches: list[int] = field(default_factory=lambda: [1, 32])  # sequences generated at once
    prompt_len: int = 32  # random prompt tokens per sequence
    max_tokens: int = 128  # tokens generated per sequence
    repeats: int = 3  # timed runs per cell (median and range reported)
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    block_size: int = 16  # the engine's KV block size
    seed: int = 0  # weights and prompts
    out: str = "engine-gpu"  # runs/week2/<out>/results.json

    def __post_init__(self) -> None:
        ints = {k: v for k, v in asdict(self).items() if k not in ("dtype", "out", "batches")}
        for name, value in [*ints.items(), *(("batches", b) for b in self.batches)]:
            low = 0 if name == "seed" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r}: use an integer >= {low}")
        if not self.batches:
            raise ValueError("batches is empty: give at least one batch size, e.g. 1 32")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, num_kv_heads="
                f"{self.num_kv_heads}: heads must divide the width and K/V heads the heads"
            )


def qwen2_config(cfg: GpuBenchConfig):
    """A transformers Qwen2 config of `cfg`'s shape (Qwen2.5's norm eps and RoPE base)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        intermediate_size=cfg.intermediate_size,
        vocab_size=cfg.vocab_size,
        max_position_embeddings=32768,
        rms_norm_eps=1e-6,
        rope_theta=1e6,
        tie_word_embeddings=True,
        eos_token_id=cfg.vocab_size - 1,
        bos_token_id=cfg.vocab_size - 1,
    )


def random_model(cfg: GpuBenchConfig, folder: Path, device: str, dtype: torch.dtype):
    """A random-weight Qwen2 of `cfg`'s shape on `device`, saved to `folder` (for the engine)."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(cfg.seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(qwen2_config(cfg)).to(dtype).eval()
    model.save_pretrained(folder)
    return model


class IdsOnly:
    """Tokenizer stand-in: prompts are token ids, so the engine only needs eos and decode."""

    eos_token_id = None

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


def make_engine(cfg: GpuBenchConfig, folder: Path, device: str, eager: bool) -> LLMEngine:
    """Our engine sized for the largest batch: every sequence's blocks fit (no preemption)."""
    B, T = max(cfg.batches), cfg.prompt_len + cfg.max_tokens
    per_seq = -(-T // cfg.block_size)
    return LLMEngine(
        EngineConfig(
            model=folder, device=device, dtype=cfg.dtype, block_size=cfg.block_size,
            num_blocks=B * per_seq + 1, max_num_seqs=B, max_model_len=T,
            max_num_batched_tokens=max(512, B * cfg.prompt_len), enforce_eager=eager,
        ),
        IdsOnly(),
    )  # fmt: skip


def timed(fn, prompts: list[list[int]], device: str) -> tuple[float, list[list[int]]]:
    """Seconds of fn(prompts) (the device synchronized on both sides), and its tokens."""
    synchronize(device)
    start = time.perf_counter()
    tokens = fn(prompts)
    synchronize(device)
    return time.perf_counter() - start, tokens


def runners(cfg: GpuBenchConfig, folder: Path, hf, device: str) -> tuple[dict, dict]:
    """impl -> f(prompts) -> each prompt's generated token ids; and the two engines."""

    def run_hf(prompts: list[list[int]]) -> list[list[int]]:
        ids = torch.tensor(prompts, device=device)  # (B, P) all the same length: no padding
        n = cfg.max_tokens
        with torch.inference_mode():
            out = hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return out[:, ids.shape[1] :].tolist()

    def engine_runner(eng: LLMEngine):
        params = SamplingParams(max_tokens=cfg.max_tokens, ignore_eos=True)
        return lambda prompts: [o.token_ids for o in eng.generate(prompts, params, False)]

    engines = {e: make_engine(cfg, folder, device, e == "engine-eager") for e in IMPLS[1:]}
    return {"hf": run_hf, **{k: engine_runner(e) for k, e in engines.items()}}, engines


def measure(cfg: GpuBenchConfig, device: str) -> dict:
    """Every (implementation, batch) cell: tok/s median [min, max], and token agreement."""
    dtype = getattr(torch, cfg.dtype)
    gen = torch.Generator().manual_seed(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        hf = random_model(cfg, Path(tmp), device, dtype)
        run, engines = runners(cfg, Path(tmp), hf, device)
        seconds = {(i, b): [] for i in IMPLS for b in cfg.batches}
        first: dict[tuple[str, int], list[list[int]]] = {}
        prompts = {
            b: torch.randint(0, cfg.vocab_size - 1, (b, cfg.prompt_len), generator=gen).tolist()
            for b in cfg.batches
        }
        for b in cfg.batches:  # warm-up: kernels chosen, graphs captured
            for impl in IMPLS:
                first[impl, b] = timed(run[impl], prompts[b], device)[1]
        for _ in range(cfg.repeats):
            for b in cfg.batches:
                for impl in IMPLS:
                    seconds[impl, b].append(timed(run[impl], prompts[b], device)[0])
        graphs = engines["engine-graphs"].runner.graphs
        replays = graphs.num_replays if graphs is not None else 0
    return {
        "config": asdict(cfg),
        "device": device,
        "cuda_graphs": graphs is not None,
        "graph_replays": replays,
        "cells": [
            cell(cfg, impl, b, seconds[impl, b], first) for b in cfg.batches for impl in IMPLS
        ],
    }


def cell(cfg: GpuBenchConfig, impl: str, b: int, secs: list[float], first: dict) -> dict:
    """One row of the table; agreement = share of this impl's warm-up tokens equal to eager's
    (bf16 rounding differs between the paths, so a near tie may break the other way)."""
    rates = [b * cfg.max_tokens / s for s in secs]
    mine, ref = first[impl, b], first["engine-eager", b]
    same = sum(x == y for m, r in zip(mine, ref) for x, y in zip(m, r))
    return {
        "impl": impl,
        "batch": b,
        "median_tok_s": statistics.median(rates),
        "min_tok_s": min(rates),
        "max_tok_s": max(rates),
        "seconds": secs,
        "tokens_equal_to_eager": same / (b * cfg.max_tokens),
    }


def table(results: dict) -> str:
    """The results as a markdown table (what the README shows)."""
    lines = [
        "| impl | batch | output tok/s, median [min-max] | tokens = eager |",
        "|---|---|---|---|",
    ]
    for c in results["cells"]:
        rng = f"{c['median_tok_s']:.0f} [{c['min_tok_s']:.0f}-{c['max_tok_s']:.0f}]"
        lines.append(f"| {c['impl']} | {c['batch']} | {rng} | {c['tokens_equal_to_eager']:.2f} |")
    return "\n".join(lines)


def main(cfg: GpuBenchConfig) -> dict:
    if not torch.cuda.is_available():
        raise SystemExit(
            "gpu_bench measures CUDA graphs and needs a CUDA device, but "
            "torch.cuda.is_available() is False here; run it on a machine with an NVIDIA GPU"
        )
    results = measure(cfg, "cuda")
    results["environment"] = environment("cuda")
    print(table(results))
    print(save_results("week2", cfg.out, results))
    return results


if __name__ == "__main__":
    main(parse(GpuBenchConfig, description=__doc__))
