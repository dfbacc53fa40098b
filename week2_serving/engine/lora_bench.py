"""Multi-LoRA throughput, Punica's way: output tokens/s against how many distinct adapters the
requests in flight use, on our engine and on vLLM CPU, with the same adapters and prompts.

    python -m week2_serving.engine.lora_bench                          # week 1's model
    python -m week2_serving.engine.lora_bench --model DIR --adapters sql=DIR2 sort=DIR3
    python -m week2_serving.engine.lora_bench --no-vllm --num-requests 64      # ours only

Without --adapters, `num_adapters` random rank-`rank` adapters (every projection targeted,
B nonzero) are made for the model with peft. The popularity mixes of Punica (Chen et al. 2023):
- distinct: every request in flight has its own adapter (requests cycle through them),
- uniform: each request draws its adapter uniformly,
- skewed: draws follow Zipf (alpha 1.5): a few adapters take most requests,
- identical: every request uses the same adapter;
and two references: `base` (the same server, requests to the base model: no LoRA work) and
`merged` (a server of adapter 0 merged into the weights, our engine: LoRA at no cost at all).

Each load sends `num_requests` requests, `concurrency` at a time, `repeats` times (fresh prompts
each time: no prefix-cache help); results: median and range of output tok/s, and the mean
number of distinct adapters among the requests in flight when each one starts.
Writes runs/week2/lora/results.json and throughput.png.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common.cli import parse
from common.plots import plt, save
from common.results import get_logger, runs_root, save_results
from common.server import vllm_available
from common.timing import environment
from week2_serving.engine.lora.config import parse_modules
from week2_serving.harness.launch import launch

log = get_logger("week2.lora_bench")
MIXES = ("distinct", "uniform", "skewed", "identical")


@dataclass
class LoRABenchConfig:
    """Multi-LoRA throughput: Punica's mixes on our engine and vLLM CPU, in one run."""

    model: str = field(default_factory=lambda: str(runs_root() / "week1" / "hf-model"))
    adapters: list[str] = field(default_factory=list)  # NAME=PEFT_FOLDER; none: random ones
    num_adapters: int = 8  # random adapters to make when --adapters is not given
    rank: int = 8  # their rank
    num_requests: int = 32  # requests per load
    concurrency: int = 8  # requests in flight at once
    prompt_len: int = 32  # random prompt tokens per request
    max_tokens: int = 32  # output tokens per request (ignore_eos)
    repeats: int = 2  # runs of each load (median and range)
    vllm: bool = True  # also run vLLM CPU's multi-LoRA (skipped, noted, without .venvs/vllm)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_adapters", "rank", "num_requests", "concurrency", "prompt_len"):
            value = getattr(self, name)
            if isinstance(value, bool) or not 1 <= value <= 4096:
                raise ValueError(f"{name}={value!r}: use an integer in 1..4096")
        if not 1 <= self.max_tokens <= 4096 or not 1 <= self.repeats <= 20:
            raise ValueError(
                f"max_tokens={self.max_tokens} (1..4096), repeats={self.repeats} (1..20)"
            )
        parse_modules(self.adapters)


# --- adapters and the merged model -----------------------------------------------------------
def make_adapters(model_dir: str, out: Path, n: int, rank: int, seed: int) -> dict[str, str]:
    """`n` random peft LoRA adapters for `model_dir` (all seven Llama projections)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    found = {}
    for i in range(n):
        folder = out / f"lora{i}"
        if not (folder / "adapter_config.json").is_file():
            torch.manual_seed(seed + i)
            base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets)
            model = get_peft_model(base, cfg, autocast_adapter_dtype=False)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    if "lora_B" in name:
                        p.normal_(0, 0.02)
            model.save_pretrained(folder)
        found[f"lora{i}"] = str(folder)
    return found


def merge(model_dir: str, adapter_dir: str, out: Path) -> Path:
    """The base with one adapter folded in (peft merge_and_unload), saved with the tokenizer."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


# --- loads -----------------------------------------------------------------------------------
def mix(kind: str, names: list[str], n: int, rng: random.Random) -> list[str]:
    """The adapter of each of `n` requests under one of Punica's popularity mixes."""
    if kind == "distinct":
        return [names[i % len(names)] for i in range(n)]
    if kind == "uniform":
        return [rng.choice(names) for _ in range(n)]
    if kind == "skewed":
        weights = [1 / (k + 1) ** 1.5 for k in range(len(names))]
        return rng.choices(names, weights, k=n)
    if kind == "identical":
        return [names[0]] * n
    raise ValueError(f"mix {kind!r}: use one of {', '.join(MIXES)}")


async def run_load(url: str, models: list[str], prompts: list[list[int]], cfg) -> dict:
    """Send one request per (model, prompt), `concurrency` at a time; tok/s and distinctness."""
    sem, in_flight, distinct = asyncio.Semaphore(cfg.concurrency), Counter(), []
    tokens = 0

    async def one(client: httpx.AsyncClient, model: str, prompt: list[int]) -> None:
        nonlocal tokens
        async with sem:
            in_flight[model] += 1
            distinct.append(len(+in_flight))
            body = {"model": model, "prompt": prompt, "max_tokens": cfg.max_tokens}
            body |= {"temperature": 0, "ignore_eos": True}
            try:
                r = await client.post(url + "/v1/completions", json=body)
            finally:
                in_flight[model] -= 1
            r.raise_for_status()
            tokens += r.json()["usage"]["completion_tokens"]

    async with httpx.AsyncClient(timeout=600) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, m, p) for m, p in zip(models, prompts)))
        seconds = time.perf_counter() - t0
    return {"tok_s": tokens / seconds, "distinct_in_flight": statistics.mean(distinct)}


def measure(url: str, loads: dict[str, list[str]], vocab: int, cfg) -> dict:
    """Every load `repeats` times (fresh random prompts each run): median and range."""
    out = {}
    for name, models in loads.items():
        runs = []
        for rep in range(cfg.repeats):
            rng = random.Random(f"{cfg.seed}-{name}-{rep}")
            prompts = [[rng.randrange(10, vocab) for _ in range(cfg.prompt_len)] for _ in models]
            runs.append(asyncio.run(run_load(url, models, prompts, cfg)))
        tps = [r["tok_s"] for r in runs]
        out[name] = {
            "tok_s": statistics.median(tps),
            "tok_s_range": [min(tps), max(tps)],
            "distinct_in_flight": statistics.mean(r["distinct_in_flight"] for r in runs),
            "distinct_adapters": len(set(models)),
        }
        log.info(
            "  %-10s %7.1f tok/s (%.1f distinct in flight)",
            name,
            out[name]["tok_s"],
            out[name]["distinct_in_flight"],
        )
    return out


# --- servers ---------------------------------------------------------------------------------
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank vLLM accepts


def adapter_rank(folder: str) -> int:
    import json

    return int(json.loads((Path(folder) / "adapter_config.json").read_text())["r"])


def lora_flags(engine: str, adapters: dict[str, str]) -> list[str]:
    """The same multi-LoRA flags for both servers: every adapter resident (max_loras = all)."""
    rank = max(adapter_rank(p) for p in adapters.values())
    if engine == "vllm":
        rank = next(r for r in VLLM_LORA_RANKS if r >= rank)
    n = str(len(adapters))
    flags = ["--lora-modules", *[f"{k}={v}" for k, v in adapters.items()]]
    flags += ["--max-loras", n, "--max-cpu-loras", n, "--max-lora-rank", str(rank)]
    return (["--enable-lora"] if engine == "vllm" else []) + flags


def serve(engine: str, model: str, extra: list[str], loads: dict, vocab: int, cfg) -> dict:
    """Start `engine` on `model` as "base", warm it up with the first load once, measure all."""
    log.info("%s on %s: %s", engine, model, ", ".join(loads))
    with launch(engine, model, extra=extra, served_name="base", timeout_s=900) as srv:
        first = next(iter(loads.values()))
        asyncio.run(run_load(srv.url, first, [[11] * cfg.prompt_len] * len(first), cfg))
        return measure(srv.url, loads, vocab, cfg)


def plot(results: dict, out: Path) -> Path:
    """tok/s against distinct adapters in flight, per server; the references as lines."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    styles = {"ours": ("o", "C0", "our engine"), "vllm": ("s", "C1", "vLLM CPU")}
    for server, (marker, color, label) in styles.items():
        cells = results.get(server)
        if not cells:  # vLLM skipped
            continue
        pts = sorted((cells[m]["distinct_in_flight"], cells[m]["tok_s"], m) for m in MIXES)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=label)
        for x, y, m in pts:
            ax.annotate(m, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.axhline(cells["base"]["tok_s"], color=color, ls=":", label=f"{label}: base only")
    if results.get("merged"):
        ax.axhline(results["merged"]["merged"]["tok_s"], color="C2", ls="--", label="ours: merged")
    ax.set_xlabel("distinct adapters among the requests in flight (mean)")
    ax.set_ylabel("output tokens/s")
    ax.set_title("Multi-LoRA: Punica's popularity mixes, same adapters and prompts")
    ax.legend(fontsize=8)
    return save(fig, out)


def main(cfg: LoRABenchConfig) -> dict:
    import json

    t0 = time.perf_counter()
    model = Path(cfg.model).expanduser()
    if not (model / "config.json").is_file():
        raise SystemExit(f"--model {model}: no HF model there; run `make week1` or pass a folder")
    out = runs_root() / "week2" / "lora"
    adapters = parse_modules(cfg.adapters) or make_adapters(
        str(model), out / "adapters", cfg.num_adapters, cfg.rank, cfg.seed
    )
    vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    rng, names, n = random.Random(cfg.seed), list(adapters), cfg.num_requests
    loads = {kind: mix(kind, names, n, rng) for kind in MIXES} | {"base": ["base"] * n}
    merged = merge(str(model), adapters[names[0]], out / "merged")
    results: dict = {"config": vars(cfg) | {"adapters": adapters}}
    results["ours"] = serve("engine", str(model), lora_flags("engine", adapters), loads, vocab, cfg)
    results["merged"] = serve("engine", str(merged), [], {"merged": ["base"] * n}, vocab, cfg)
    if cfg.vllm and vllm_available():
        results["vllm"] = serve("vllm", str(model), lora_flags("vllm", adapters), loads, vocab, cfg)
    else:
        results["vllm_skipped"] = "--no-vllm" if not cfg.vllm else ".venvs/vllm is absent"
    results["environment"] = environment()
    results["seconds"] = time.perf_counter() - t0  # the whole run, servers' start-up included
    save_results("week2", "lora", results)
    plot(results, out / "throughput.png")
    return results


if __name__ == "__main__":
    main(parse(LoRABenchConfig, description=__doc__))
