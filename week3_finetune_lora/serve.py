"""Serve the base model and every adapter at once on vLLM, score them, and measure the cost.

    python -m week3_finetune_lora.serve                  # all adapters under runs/week3/*/adapter
    python -m week3_finetune_lora.serve --adapters reverse=runs/week3/sft-reverse/adapter \
        sort=runs/week3/sft-sort/adapter --max-lora-rank 8
    python -m week3_finetune_lora.serve --skip-bench     # only the served-vs-local scores
    python -m week3_finetune_lora.serve --preset gpu     # Qwen2.5-0.5B-Instruct + adapters, bf16

vLLM is started through week 2's launcher with

    --enable-lora --lora-modules reverse=DIR sort=DIR ... --max-lora-rank R --max-loras K

and a request picks its adapter by `"model": "<name>"` (the base answers to its own name).
This script then

1. scores every adapter through the endpoint with the same scorer as the local eval
   (evaluate.py) and compares with the local score of the same weights (within 2 points);
2. loads one more adapter at runtime (`POST /v1/load_lora_adapter`, allowed by
   `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) and times it;
3. runs week 2's load harness three ways: requests to the base only, requests spread
   round-robin over K adapters, and (on a second server without LoRA) one adapter merged into
   the base weights — the price of serving adapters unmerged.

On a GPU (`--preset gpu`) the same runs on vLLM's CUDA build (`make setup-vllm` installs
it where nvidia-smi works) at `--dtype bfloat16`; the local reference runs on the GPU in the
same dtype, so the two scores compare like with like.

Before starting anything it checks every adapter against the server: rank <= --max-lora-rank
and trained for this base; a bad adapter fails at once with its name and the numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import torch

from common.hub import is_offline, resolve_model
from common.provenance import server_versions
from common.results import get_logger, run_dir, runs_root, write_results
from common.timing import environment
from week2_serving.harness.bench import BenchConfig, run_load
from week2_serving.harness.launch import launch
from week2_serving.harness.metrics import compute_metrics
from week2_serving.harness.workloads import random_requests
from week3_finetune_lora.adapters import AdapterError, adapter_rank, check_adapter_base
from week3_finetune_lora.data import known_tasks, read_jsonl
from week3_finetune_lora.evaluate import evaluate_rows, generate_local, generate_served
from week3_finetune_lora.sft import (
    GPU_MODEL,
    check_device_dtype,
    default_data_dir,
    default_model,
    max_new_tokens_for,
)

log = get_logger("week3.serve")
# vLLM accepts only these values for --max-lora-rank.
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


@dataclass
class ServeConfig:
    model: str | None = None  # default: runs/week1/hf-model (week 1's export)
    adapters: dict[str, str] = field(default_factory=dict)  # name -> folder; empty: discover
    runtime_adapter: str | None = None  # name=DIR loaded after start-up (default: a DPO adapter)
    max_lora_rank: int | None = None  # None: the smallest value vLLM accepts that fits all
    data_dir: str | None = None  # default: runs/week3/data
    eval_limit: int | None = None
    skip_bench: bool = False
    bench_prompts: int = 64
    bench_concurrency: int = 16
    bench_input_len: int = 16
    bench_output_len: int = 64
    max_model_len: int = 256
    port: int | None = None
    run_name: str = "serve"
    dtype: str = "float32"  # vLLM's --dtype and the local reference's dtype
    device: str = "cpu"  # the local reference eval's device (vLLM picks its own)
    vllm_args: tuple[str, ...] = ()  # more vLLM flags, e.g. --gpu-memory-utilization 0.5
    offline: bool | None = None  # None: offline only if HF_HUB_OFFLINE is set (common.hub)

    def __post_init__(self) -> None:
        self.model = self.model or default_model()
        self.data_dir = self.data_dir or default_data_dir()
        check_device_dtype(self.device, self.dtype)
        if self.dtype == "auto":
            raise ValueError(
                "dtype='auto': name it (float32, bfloat16, float16) so that vLLM and "
                "the local reference use the same one"
            )
        self.vllm_args = tuple(self.vllm_args)
        if self.max_lora_rank is not None and self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(
                f"max_lora_rank={self.max_lora_rank}: vLLM accepts one of {VLLM_LORA_RANKS}"
            )


PRESETS = {
    "cpu": {},
    # gpu: vLLM's CUDA build; it leaves room on the GPU for the local reference model
    "gpu": dict(
        model=GPU_MODEL,
        dtype="bfloat16",
        device="auto",
        max_model_len=1024,
        bench_prompts=256,
        bench_concurrency=64,
        bench_input_len=64,
        bench_output_len=128,
        vllm_args=("--gpu-memory-utilization", "0.5"),
    ),
}


def make_config(preset: str = "cpu", **overrides) -> ServeConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return ServeConfig(**{**PRESETS[preset], **overrides})


def vllm_extra(cfg: ServeConfig) -> list[str]:
    """Flags added to every vLLM server of the run: the dtype (when not the launcher's fp32,
    which the CPU build needs) and the preset's own flags."""
    dtype = [] if cfg.dtype == "float32" else ["--dtype", cfg.dtype]  # the last --dtype wins
    return [*dtype, *cfg.vllm_args]


def discover_adapters(week_dir: Path) -> dict[str, str]:
    """{task: folder} for every runs/week3/sft-<task>/adapter, plus qlora-/dpo- ones."""
    found = {}
    for prefix in ("sft", "qlora", "dpo"):
        for d in sorted(week_dir.glob(f"{prefix}-*/adapter")):
            task = d.parent.name.split("-", 1)[1]
            found[task if prefix == "sft" else f"{prefix}-{task}"] = str(d)
    return found


def pick_max_rank(adapters: dict[str, str], max_lora_rank: int | None) -> int:
    """The server's --max-lora-rank; raises AdapterError for an adapter that cannot fit."""
    ranks = {name: adapter_rank(d) for name, d in adapters.items()}
    if max_lora_rank is None:
        need = max(ranks.values(), default=1)
        fits = [r for r in VLLM_LORA_RANKS if r >= need]
        if not fits:
            raise AdapterError(f"adapter rank {need} exceeds vLLM's largest {VLLM_LORA_RANKS[-1]}")
        return fits[0]
    too_big = {n: r for n, r in ranks.items() if r > max_lora_rank}
    if too_big:
        raise AdapterError(
            f"adapter(s) {too_big} have rank above the server's --max-lora-rank {max_lora_rank}; "
            f"raise --max-lora-rank to at least {max(too_big.values())} or retrain with a smaller "
            "--rank"
        )
    return max_lora_rank


def check_adapters(model_dir: str, adapters: dict[str, str]) -> None:
    """Every adapter must be for this base (fingerprint and shapes); fail before vLLM starts."""
    from transformers import AutoModelForCausalLM

    # the fingerprint hashes the embedding in fp32: loading it in fp32 matches any trained dtype
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    for name, d in adapters.items():
        try:
            check_adapter_base(d, base)
        except AdapterError as e:
            raise AdapterError(f"adapter {name!r}: {e}") from e


def lora_args(adapters: dict[str, str], max_rank: int, max_loras: int | None = None) -> list[str]:
    """vLLM's multi-LoRA flags; max_loras = adapters resident per batch (default: all)."""
    return [
        "--enable-lora",
        "--lora-modules",
        *[f"{n}={d}" for n, d in adapters.items()],
        "--max-lora-rank",
        str(max_rank),
        "--max-loras",
        str(max_loras or max(len(adapters), 1)),
    ]


def task_of(name: str) -> str:
    """Adapter name -> its task: 'reverse', 'qlora-reverse', 'dpo-reverse' -> 'reverse'."""
    return name.split("-", 1)[1] if name.split("-", 1)[0] in ("qlora", "dpo") else name


def task_data(name: str) -> bool:
    """Whether an adapter's task has test rows to score it on (a known task)."""
    return task_of(name) in known_tasks()


def score_served_and_local(cfg: ServeConfig, url: str, adapters: dict[str, str]) -> list[dict]:
    """Per adapter: exact match served (vLLM) and local (HF + peft), same rows, same scorer."""
    from week3_finetune_lora.evaluate import load_local

    rows_out = []
    for name, d in adapters.items():
        task = task_of(name)
        if not task_data(name):
            log.warning("adapter %s: no task data for %r, not scored", name, task)
            continue
        rows = read_jsonl(Path(cfg.data_dir) / task / "test.jsonl")[: cfg.eval_limit]
        model, tok = load_local(cfg.model, d, cfg.device, cfg.dtype)
        n_new = max_new_tokens_for(tok, rows)
        local = evaluate_rows(rows, lambda p, m=model, t=tok, n=n_new: generate_local(m, t, p, n))
        served = evaluate_rows(rows, lambda p, n=n_new, a=name: generate_served(url, a, p, n))
        agree = sum(a == b for a, b in zip(local["per_row"], served["per_row"])) / len(rows)
        row = {
            "adapter": name,
            "task": task,
            "n": len(rows),
            "local_exact": local["exact_match"],
            "served_exact": served["exact_match"],
            "diff_points": 100 * (served["exact_match"] - local["exact_match"]),
            "same_verdict_rate": agree,
            "served_examples": served["examples"][:3],
        }
        log.info(
            "%s: served %.1f%% vs local %.1f%% (%+.1f points)",
            name,
            100 * row["served_exact"],
            100 * row["local_exact"],
            row["diff_points"],
        )
        rows_out.append(row)
    return rows_out


def cross_check(url: str, names: list[str], data_dir: str) -> dict:
    """One prompt per task sent to every adapter in one batch of concurrent requests: each
    adapter must answer its own task, so the outputs differ by adapter."""
    prompts = {}
    for name in names:
        task = task_of(name)
        if task_data(name) and task not in prompts:
            prompts[task] = read_jsonl(Path(data_dir) / task / "test.jsonl")[0]

    async def go():
        async with httpx.AsyncClient(timeout=120) as c:
            reqs = [(n, t, r) for n in names for t, r in prompts.items()]
            resps = await asyncio.gather(
                *[
                    c.post(
                        url + "/v1/completions",
                        json={
                            "model": n,
                            "prompt": r["prompt"],
                            "max_tokens": 10,
                            "temperature": 0,
                        },
                    )
                    for n, _, r in reqs
                ]
            )
            return [
                {
                    "adapter": n,
                    "prompt": r["prompt"],
                    "output": resp.json()["choices"][0]["text"],
                    "expected": r["completion"],
                }
                for (n, _, r), resp in zip(reqs, resps)
            ]

    return {"answers": asyncio.run(go())}


def load_runtime_adapter(url: str, name: str, path: str, data_dir: str) -> dict:
    """POST /v1/load_lora_adapter, timed; then the first request to it, timed."""
    t0 = time.perf_counter()
    r = httpx.post(
        url + "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path}, timeout=120
    )
    load_s = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"runtime load of {name}={path} answered {r.status_code}: {r.text}")
    listed = [m["id"] for m in httpx.get(url + "/v1/models", timeout=10).json()["data"]]
    task = task_of(name)
    prompt = read_jsonl(Path(data_dir) / task / "test.jsonl")[0] if task_data(name) else None
    t0 = time.perf_counter()
    out = generate_served(url, name, [prompt["prompt"] if prompt else "1"], 10)
    first_s = time.perf_counter() - t0
    return {
        "name": name,
        "path": path,
        "load_seconds": load_s,
        "first_request_seconds": first_s,
        "listed": name in listed,
        "first_output": out[0],
    }


def bench(url: str, model_dir: str, models: list[str], cfg: ServeConfig, label: str) -> dict:
    """Week 2's harness: random prompts, each request sent to models[i % len(models)]."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    bc = BenchConfig(
        base_url=url,
        num_prompts=cfg.bench_prompts,
        random_input_len=cfg.bench_input_len,
        random_output_len=cfg.bench_output_len,
        max_concurrency=cfg.bench_concurrency,
        save=False,
        run_name=label,
    )
    reqs = random_requests(
        tok, bc.num_prompts, bc.random_input_len, bc.random_output_len, 0.0, bc.seed, True
    )
    for i, r in enumerate(reqs):
        r.extra["model"] = models[i % len(models)]  # round-robin over the adapters

    def count(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    records, duration = asyncio.run(run_load(bc, reqs, models[0], count, progress=False))
    m = compute_metrics(records, duration)
    log.info(
        "%s: %.0f output tok/s, mean TTFT %.0f ms, mean TPOT %.1f ms, failed %d",
        label,
        m["output_throughput"],
        m["mean_ttft_ms"],
        m["mean_tpot_ms"],
        m["failed"],
    )
    keys = ("output_throughput", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "failed")
    return {"label": label, "models": models, **{k: m[k] for k in keys}}


def merge_to_folder(model_dir: str, adapter_dir: str, out: Path, dtype: str = "float32") -> Path:
    """Fold an adapter into the base weights (W + (alpha/r)·B·A) and save a plain HF folder."""
    from transformers import AutoTokenizer

    from week3_finetune_lora.evaluate import load_local

    model, _ = load_local(model_dir, adapter_dir, "cpu", dtype)
    merged = model.merge_and_unload()
    merged.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def main(cfg: ServeConfig) -> dict:
    if cfg.device == "cpu":
        torch.set_num_threads(1)  # the local evals share the 2 cores with the vLLM server
    # one local folder for everything (vLLM, the checks, the local evals): a hub id resolved
    cfg.model = str(resolve_model(cfg.model, is_offline(cfg.offline)))
    week = runs_root() / "week3"
    out = run_dir("week3", cfg.run_name)
    adapters = dict(cfg.adapters) or discover_adapters(week)
    runtime = cfg.runtime_adapter
    if runtime is None:  # default: the DPO adapter is loaded at runtime, not at start-up
        dpo = {n: d for n, d in adapters.items() if n.startswith("dpo-")}
        if dpo:
            name, path = next(iter(dpo.items()))
            adapters.pop(name)
            runtime = f"{name}={path}"
    if not adapters:
        raise FileNotFoundError(
            f"no adapters given and none found under {week}/*/adapter; run week3_finetune_lora.sft"
        )
    all_adapters = dict(adapters)
    if runtime:
        rname, _, rpath = runtime.partition("=")
        all_adapters[rname] = rpath
    max_rank = pick_max_rank(all_adapters, cfg.max_lora_rank)
    check_adapters(cfg.model, all_adapters)
    log.info("serving %d adapters (max rank %d): %s", len(adapters), max_rank, ", ".join(adapters))
    base_name = "base"
    server = launch(
        "vllm",
        cfg.model,
        port=cfg.port,
        extra=[*lora_args(adapters, max_rank, len(all_adapters)), *vllm_extra(cfg)],
        max_model_len=cfg.max_model_len,
        log_dir=out,
        served_name=base_name,
    )
    server.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    results: dict = {"config": asdict(cfg), "adapters": adapters, "max_lora_rank": max_rank}
    t0 = time.perf_counter()
    with server:
        results["startup_seconds"] = time.perf_counter() - t0
        url = server.url
        versions = server_versions(url)  # vLLM's own version, from its /version
        models = httpx.get(url + "/v1/models", timeout=10).json()["data"]
        results["served_models"] = [{"id": m["id"], "parent": m.get("parent")} for m in models]
        results["scores"] = score_served_and_local(cfg, url, adapters)
        results["cross_check"] = cross_check(url, list(adapters), cfg.data_dir)
        if runtime:
            rname, _, rpath = runtime.partition("=")
            results["runtime_load"] = load_runtime_adapter(url, rname, rpath, cfg.data_dir)
            log.info(
                "runtime load of %s: %.2f s, first request %.2f s",
                rname,
                results["runtime_load"]["load_seconds"],
                results["runtime_load"]["first_request_seconds"],
            )
            results["scores"] += score_served_and_local(cfg, url, {rname: rpath})
        if not cfg.skip_bench:
            names = list(adapters)
            results["bench"] = [
                bench(url, cfg.model, [base_name], cfg, "base only (LoRA server)"),
                bench(url, cfg.model, names[:1], cfg, "1 adapter"),
                bench(url, cfg.model, names, cfg, f"{len(names)} adapters round-robin"),
            ]
    if not cfg.skip_bench:
        first = next(iter(adapters.items()))
        merged_dir = merge_to_folder(cfg.model, first[1], out / f"merged-{first[0]}", cfg.dtype)
        with launch(
            "vllm",
            merged_dir,
            port=cfg.port,
            extra=vllm_extra(cfg),
            max_model_len=cfg.max_model_len,
            log_dir=out,
            served_name="merged",
        ) as merged:
            results["bench"].append(
                bench(merged.url, str(merged_dir), ["merged"], cfg, f"merged {first[0]} (no LoRA)")
            )
            rows = read_jsonl(Path(cfg.data_dir) / task_of(first[0]) / "test.jsonl")
            rows = rows[: cfg.eval_limit]
            res = evaluate_rows(rows, lambda p: generate_served(merged.url, "merged", p, 10))
            results["merged_served_exact"] = res["exact_match"]
    results["environment"] = environment(server_versions=versions)
    write_results(out / "results.json", results)
    return results


def parse_adapters(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise argparse.ArgumentTypeError(f"--adapters {item!r}: use NAME=FOLDER")
        out[name] = path
    return out


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = ServeConfig()
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--model", default=None, help=f"folder or hub id (default {d.model})")
    p.add_argument("--offline", action="store_true", default=None, help="hub cache only")
    p.add_argument("--adapters", nargs="*", default=None, help="NAME=FOLDER ... (default: found)")
    p.add_argument("--runtime-adapter", default=None, help="NAME=FOLDER to load after start-up")
    p.add_argument("--max-lora-rank", type=int, default=None)
    p.add_argument("--data-dir", default=None, help=f"default {d.data_dir}")
    p.add_argument("--eval-limit", type=int, default=None)
    p.add_argument("--skip-bench", action="store_true", default=None)
    p.add_argument("--bench-prompts", type=int, default=None, help=f"default {d.bench_prompts}")
    p.add_argument("--bench-concurrency", type=int, default=None)
    p.add_argument("--dtype", default=None, help="vLLM and local reference (default float32)")
    p.add_argument("--device", default=None, help="local reference: cpu (default), auto, cuda")
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--run-name", default=None)
    a = vars(p.parse_args())
    preset = a.pop("preset")
    a["adapters"] = parse_adapters(a["adapters"])
    main(make_config(preset, **{k: v for k, v in a.items() if v is not None}))
