"""An OpenAI-compatible HTTP server around LLMEngine (FastAPI + uvicorn): the command line.

    python -m week2_serving.engine.server --model runs/week1/hf-model --port 8000
    python -m week2_serving.engine.server --model org/name --device cuda --dtype bfloat16  # GPU
    python -m week2_serving.harness.launch engine --model runs/week1/hf-model      # same, managed

Endpoints: POST /v1/completions, POST /v1/chat/completions (streaming with SSE, or not),
GET /v1/models, /health, /metrics (Prometheus text). Binds 127.0.0.1 unless told otherwise.

Where the parts live: protocol.py (request bodies, errors), async_engine.py (the engine thread
and its queues), api.py (the routes), detokenizer.py (streamed text); this file reads the
command line, loads the engine and runs uvicorn.
"""

from __future__ import annotations

import dataclasses
import gc
import os
from dataclasses import dataclass, field
from typing import Any, Literal

from common.cli import parse
from common.results import get_logger
from week2_serving.engine.api import create_app
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine

__all__ = ["ServerConfig", "create_app", "engine_config", "engine_cpus", "main", "parse_args"]

log = get_logger("week2.engine.server")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def engine_default(name: str) -> Any:
    """A field with the default of EngineConfig's field `name` (written once, there)."""
    f = EngineConfig.__dataclass_fields__[name]
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=lambda: str(f.default_factory()))
    return field(default=f.default)


def default_threads() -> int:
    return max(1, (os.cpu_count() or 1) - 1)


@dataclass
class ServerConfig:
    """Serve a Llama/GPT-2 model with our engine over an OpenAI-compatible HTTP API."""

    # Llama/GPT-2 model: an HF folder (week 1's export) or a hub id (org/name)
    model: str = engine_default("model")
    # resolve a hub id from the local cache only; None: offline only if HF_HUB_OFFLINE is set
    offline: bool | None = None
    device: str = engine_default("device")  # auto (cuda > mps > cpu), cpu, cuda or cuda:N
    # weights and KV cache; auto: bfloat16 on GPUs that support it, else float32
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = engine_default("dtype")
    served_model_name: str | None = None  # name in the API; None: the --model value
    host: str = "127.0.0.1"  # address to bind
    port: int = 8000  # port to listen on
    api_key: str | None = None  # require 'Authorization: Bearer KEY' on /v1
    block_size: int = engine_default("block_size")  # tokens per KV block
    num_kv_blocks: int | None = None  # KV pool size in blocks; None: from --kv-cache-gib
    kv_cache_gib: float = engine_default("kv_cache_gib")  # KV pool size in GiB
    max_num_seqs: int = engine_default("max_num_seqs")  # requests running at once
    max_num_batched_tokens: int = engine_default("max_num_batched_tokens")  # tokens per step
    max_model_len: int | None = None  # context length; None: the model's
    enable_prefix_caching: bool = engine_default("enable_prefix_caching")  # reuse shared prefixes
    # continuous (requests join and leave every step), static (a batch at a time), sequential
    scheduling: Literal["continuous", "static", "sequential"] = engine_default("scheduling")
    # torch threads for the forward pass; default: all cores but one, which the event loop and,
    # in a benchmark on the same machine, the client need
    threads: int = field(default_factory=default_threads)
    # cores for the engine thread, e.g. '0' or '0,1'; 'auto': all but the last when there are
    # 2 or more, as vLLM's CPU build binds its worker; 'all': no binding
    engine_cpus: str = "auto"


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    return parse(ServerConfig, argv, description=__doc__)


def engine_config(a: ServerConfig) -> EngineConfig:
    """The engine's config from the command line; a bad --device/--dtype stops here, with the
    value and what to use, before any weights load."""
    try:
        return EngineConfig(
            model=a.model,
            block_size=a.block_size,
            num_blocks=a.num_kv_blocks,
            kv_cache_gib=a.kv_cache_gib,
            max_num_seqs=a.max_num_seqs,
            max_num_batched_tokens=a.max_num_batched_tokens,
            max_model_len=a.max_model_len,
            enable_prefix_caching=a.enable_prefix_caching,
            scheduling=a.scheduling,
            device=a.device,
            dtype=a.dtype,
            offline=a.offline,
        )
    except ValueError as e:
        raise SystemExit(f"--device {a.device!r} / --dtype {a.dtype!r}: {e}") from None


def engine_cpus(spec: str) -> set[int] | None:
    """The engine thread's cores for --engine-cpus SPEC (None: leave it to the scheduler).

    With the engine thread on its own core(s), the event loop and a benchmark client on the
    same machine no longer take turns with the forward pass on one core (the README's engine
    section has the measured effect).
    """
    if spec == "all":
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if spec == "auto":
        return set(allowed[:-1]) if len(allowed) > 1 else None
    try:
        cpus = {int(c) for c in spec.split(",")}
    except ValueError:
        raise SystemExit(
            f"--engine-cpus {spec!r}: give core ids like '0' or '0,1', 'auto' or 'all'"
        ) from None
    if not cpus <= set(allowed):  # checked here: a bad set would kill the engine thread later
        raise SystemExit(f"--engine-cpus {spec!r}: this process may use cores {allowed}")
    return cpus


def main(cfg: ServerConfig) -> None:
    import torch
    import uvicorn

    torch.set_num_threads(cfg.threads)
    try:
        engine = LLMEngine(engine_config(cfg))
    except (FileNotFoundError, ValueError) as e:  # not found / not cached, unsupported model
        raise SystemExit(f"--model {cfg.model!r}: {e}") from None
    cpus = engine_cpus(cfg.engine_cpus)
    name = cfg.served_model_name or cfg.model
    app = create_app(engine, name, cfg.api_key, cpus)
    # Everything alive now (torch, transformers, the weights' Python objects) lives as long as
    # the server: take it out of the garbage collector's reach, so a full collection does not
    # stall every stream for a few hundred ms under load (vLLM does the same).
    gc.collect()
    gc.freeze()
    where = sorted(cpus) if cpus else "any"
    log.info(
        "serving %s on http://%s:%d (engine thread on cores %s)", name, cfg.host, cfg.port, where
    )
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main(parse_args())
