"""Serve the base model and every adapter at once on vLLM, score them, and measure the cost.

    python -m week3_finetune_lora.serve                  # all adapters under runs/week3/*/adapter
    python -m week3_finetune_lora.serve --adapters reverse=runs/week3/sft-reverse/adapter \\
        sort=runs/week3/sft-sort/adapter --max-lora-rank 8
    python -m week3_finetune_lora.serve --skip-bench     # only the served-vs-local scores
    python -m week3_finetune_lora.serve --max-loras 1    # one adapter per batch (exercise 4)
    python -m week3_finetune_lora.serve --preset gpu     # Qwen2.5-0.5B-Instruct + adapters, bf16
    python -m week3_finetune_lora.serve --server engine --run-name serve-engine --skip-bench
                                                         # the same on our engine (week 2b)

vLLM is started through week 2's launcher with the multi-LoRA flags (multilora.py). Then

1. every adapter is scored through the endpoint with the same scorer as the local eval and
   compared with the local score of the same weights (served_eval.py; within 2 points). Failed
   requests are counted and kept with their errors; results.json is rewritten after each
   adapter, and a rerun keeps the adapters an earlier run finished (`--no-resume`: redo all);
2. one more adapter is loaded at runtime (`POST /v1/load_lora_adapter`, allowed by
   `VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`) and timed;
3. week 2's load harness runs three ways: requests to the base only, requests spread
   round-robin over the adapters, and (on a second server without LoRA) one adapter merged
   into the base weights — the price of serving adapters unmerged.

On a GPU (`--preset gpu`) the same runs on vLLM's CUDA build (`make setup-vllm` installs
it where nvidia-smi works) at `--dtype bfloat16`; the local reference runs on the GPU in the
same dtype, so the two scores compare like with like.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from common.cli import parse
from common.hub import is_offline, resolve_model
from common.provenance import server_versions
from common.results import get_logger, run_dir, runs_root
from common.timing import environment
from week2_serving.harness import launch_server
from week3_finetune_lora.config import (
    GPU_MODEL,
    check_device_dtype,
    default_data_dir,
    default_model,
    from_preset,
)
from week3_finetune_lora.generation import complete_served, generate_local, load_local
from week3_finetune_lora.multilora import (
    VLLM_LORA_RANKS,
    AdapterPlan,
    check_adapters,
    has_task,
    load_runtime_adapter,
    lora_args,
    merge_to_folder,
    plan_adapters,
    served_models,
    task_of,
)
from week3_finetune_lora.rows import task_rows
from week3_finetune_lora.scoring import evaluate_rows, max_new_tokens_for
from week3_finetune_lora.served_eval import RunRecord, bench_models, cross_check, score_adapters

log = get_logger("week3.serve")


@dataclass
class ServeConfig:
    """Multi-LoRA serving on vLLM: served-vs-local scores, a runtime load, the cost."""

    model: str | None = None  # base: HF folder or hub id; none: runs/week1/hf-model
    adapters: tuple[str, ...] = ()  # NAME=FOLDER ...; empty: every runs/week3/*/adapter
    runtime_adapter: str | None = None  # NAME=FOLDER loaded after start-up; none: a DPO one
    max_lora_rank: int | None = None  # vLLM --max-lora-rank; none: the smallest that fits
    max_loras: int | None = None  # vLLM --max-loras: adapters per batch; none: all of them
    data_dir: str | None = None  # task files; none: runs/week3/data
    eval_limit: int | None = None  # held-out rows scored per adapter (none = all)
    skip_bench: bool = False  # only the scores, no load test
    resume: bool = True  # keep adapters a previous run with the same settings finished
    bench_prompts: int = 64  # requests per load test
    bench_concurrency: int = 16  # requests in flight
    bench_input_len: int = 16  # random prompt tokens
    bench_output_len: int = 64  # output tokens (ignore_eos)
    max_model_len: int = 256  # vLLM --max-model-len
    port: int | None = None  # server port; none: a free one
    run_name: str = "serve"  # runs/week3/<run_name>/
    dtype: str = "float32"  # vLLM's --dtype and the local reference's dtype
    device: str = "cpu"  # the local reference eval's device (vLLM picks its own)
    offline: bool | None = (
        None  # read the local hub cache only; none: only if HF_HUB_OFFLINE is set
    )
    # more vLLM flags, e.g. ("--gpu-memory-utilization", "0.5"); set by presets and code
    vllm_args: tuple[str, ...] = field(default=(), metadata={"cli": False})
    # the server: vLLM, or our own engine (week2_serving/engine, same LoRA flags and routes)
    server: Literal["vllm", "engine"] = "vllm"

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
        if isinstance(self.adapters, dict):
            self.adapters = tuple(f"{n}={d}" for n, d in self.adapters.items())
        self.adapters = tuple(self.adapters)
        for item in (*self.adapters, *([self.runtime_adapter] if self.runtime_adapter else [])):
            name, sep, path = item.partition("=")
            if not (sep and name and path):
                raise ValueError(f"adapter {item!r}: use NAME=FOLDER")
        if self.max_lora_rank is not None and self.max_lora_rank not in VLLM_LORA_RANKS:
            raise ValueError(
                f"max_lora_rank={self.max_lora_rank}: vLLM accepts one of {VLLM_LORA_RANKS}"
            )
        if self.max_loras is not None and self.max_loras < 1:
            raise ValueError(f"max_loras={self.max_loras} must be >= 1")

    def adapter_dirs(self) -> dict[str, str]:
        """The --adapters as {name: folder}."""
        return dict(item.split("=", 1) for item in self.adapters)

    def load_shape(self) -> dict:
        return dict(
            prompts=self.bench_prompts,
            concurrency=self.bench_concurrency,
            input_len=self.bench_input_len,
            output_len=self.bench_output_len,
        )


PRESETS = {
    # tiny: a quick check on small adapters (tests, a first try)
    "tiny": dict(eval_limit=16, skip_bench=True, max_model_len=128),
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
    return from_preset(ServeConfig, PRESETS, preset, **overrides)


def vllm_extra(cfg: ServeConfig) -> list[str]:
    """Flags added to every vLLM server of the run: the dtype (when not the launcher's fp32,
    which the CPU build needs) and the preset's own flags. Our engine: its --dtype only."""
    if cfg.server == "engine":
        return ["--dtype", cfg.dtype]
    dtype = [] if cfg.dtype == "float32" else ["--dtype", cfg.dtype]  # the last --dtype wins
    return [*dtype, *cfg.vllm_args]


def _local_for(cfg: ServeConfig):
    def make(adapter_dir: str, rows: list[dict]):
        model, tok = load_local(cfg.model, adapter_dir, cfg.device, cfg.dtype)
        n_new = max_new_tokens_for(tok, rows)
        return (lambda prompts: generate_local(model, tok, prompts, n_new)), n_new

    return make


def _serve_and_score(cfg: ServeConfig, url: str, plan: AdapterPlan, record: RunRecord) -> None:
    """Everything done on the LoRA server: scores, cross-check, runtime load, load tests."""
    r = record.data

    def rows_for(task: str) -> list[dict]:
        return task_rows(cfg.data_dir, task, "test", cfg.eval_limit)

    r["served_models"] = served_models(url)
    score_adapters(url, plan.startup, record, rows_for, _local_for(cfg))
    r["cross_check"] = cross_check(url, list(plan.startup), rows_for)
    r["failed_requests"] += r["cross_check"]["failed_requests"]
    record.save()
    if plan.runtime:
        name, path = plan.runtime
        prompt = rows_for(task_of(name))[0]["prompt"] if has_task(name) else "1"
        r["runtime_load"] = load_runtime_adapter(url, name, path, prompt)
        log.info("runtime load of %s: %s", name, r["runtime_load"])
        if "error" not in r["runtime_load"]:
            score_adapters(url, dict([plan.runtime]), record, rows_for, _local_for(cfg))
    if not cfg.skip_bench:
        names, load = list(plan.startup), cfg.load_shape()
        r["bench"] = [
            bench_models(url, cfg.model, ["base"], "base only (LoRA server)", load),
            bench_models(url, cfg.model, names[:1], "1 adapter", load),
            bench_models(url, cfg.model, names, f"{len(names)} adapters round-robin", load),
        ]
        record.save()


def _bench_merged(cfg: ServeConfig, plan: AdapterPlan, out, record: RunRecord) -> None:
    """The first adapter merged into the base, on a second server without LoRA."""
    name, adapter_dir = next(iter(plan.startup.items()))
    merged_dir = merge_to_folder(cfg.model, adapter_dir, out / f"merged-{name}", cfg.dtype)
    with launch_server(
        cfg.server,
        merged_dir,
        port=cfg.port,
        extra=vllm_extra(cfg),
        max_model_len=cfg.max_model_len,
        log_dir=out,
        served_name="merged",
    ) as merged:
        label = f"merged {name} (no LoRA)"
        load = cfg.load_shape()
        record.data["bench"].append(
            bench_models(merged.url, str(merged_dir), ["merged"], label, load)
        )
        rows = task_rows(cfg.data_dir, task_of(name), "test", cfg.eval_limit)
        res = evaluate_rows(rows, lambda p: complete_served(merged.url, "merged", p, 10).outputs)
        record.data["merged_served_exact"] = res["exact_match"]
        record.data["merged_failed"] = res["failed"]
    record.save()


def main(cfg: ServeConfig) -> dict:
    if cfg.device == "cpu":
        torch.set_num_threads(1)  # the local evals share the CPU cores with the vLLM server
    # one local folder for everything (vLLM, the checks, the local evals): a hub id resolved
    cfg.model = str(resolve_model(cfg.model, is_offline(cfg.offline)))
    out = run_dir("week3", cfg.run_name)
    plan = plan_adapters(
        cfg.adapter_dirs(), cfg.runtime_adapter, runs_root() / "week3", cfg.max_lora_rank
    )
    check_adapters(cfg.model, plan.all)
    log.info(
        "serving %d adapters (max rank %d): %s", len(plan.startup), plan.max_rank, plan.startup
    )
    record = RunRecord(out / "results.json", asdict(cfg), resume=cfg.resume)
    record.data.update(adapters=plan.startup, max_lora_rank=plan.max_rank)
    server = launch_server(
        cfg.server,
        cfg.model,
        port=cfg.port,
        extra=[
            *lora_args(plan.startup, plan.max_rank, cfg.max_loras or len(plan.all)),
            *vllm_extra(cfg),
        ],
        max_model_len=cfg.max_model_len,
        log_dir=out,
        served_name="base",
    )
    server.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    t0 = time.perf_counter()
    with server:
        record.data["startup_seconds"] = time.perf_counter() - t0
        versions = server_versions(server.url)  # vLLM's own version, from its /version
        _serve_and_score(cfg, server.url, plan, record)
    if not cfg.skip_bench:
        _bench_merged(cfg, plan, out, record)
    record.data["environment"] = environment(server_versions=versions)
    record.save()
    log.info("%d failed request(s) in all; results in %s", record.data["failed_requests"], out)
    return record.data


def parse_args(argv: list[str] | None = None) -> ServeConfig:
    return parse(ServeConfig, argv, presets=PRESETS, default_preset="cpu", description=__doc__)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main(parse_args())
