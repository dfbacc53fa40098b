"""An OpenAI-compatible HTTP server around LLMEngine (FastAPI + uvicorn): the command line.

    python -m week2_serving.engine.server --model runs/week1/hf-model --port 8000
    python -m week2_serving.engine.server --model org/name --device cuda --dtype bfloat16  # GPU
    python -m week2_serving.harness.launch engine --model runs/week1/hf-model      # same, managed

Endpoints: POST /v1/completions, POST /v1/chat/completions (streaming with SSE, or not),
GET /v1/models, /health, /metrics (Prometheus text). Binds 127.0.0.1 unless told otherwise.

An API key comes from the environment (IE_API_KEY=...) or a file (--api-key-file), never from
the command line (which every user of the machine can read in `ps`); with one set, every route
but /health (and /metrics with --metrics-public) needs `Authorization: Bearer KEY`.
If the engine loop dies the server answers 503, fails what is in flight and exits non-zero.

Where the parts live: protocol.py (request bodies, errors), async_engine.py (the engine thread
and its queues), guards.py (limits, API key, error bodies), api.py (the routes),
detokenizer.py (streamed text); this file reads the command line, loads the engine and runs
uvicorn.
"""

from __future__ import annotations

import atexit
import dataclasses
import gc
import ipaddress
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from common.cli import build_parser, config_from_args
from common.results import get_logger
from week2_serving.engine import fast_detokenizer
from week2_serving.engine.api import create_app
from week2_serving.engine.core_client import CoreClient
from week2_serving.engine.guards import ServingLimits
from week2_serving.engine.kv_quant import KV_CACHE_DTYPES
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.lora.config import LoRAConfig, parse_modules
from week2_serving.engine.scheduler import POLICIES
from week2_serving.engine.server_run import run_until_engine_dies
from week2_serving.engine.spec.config import SpecConfig

__all__ = [
    "ServerConfig",
    "create_app",
    "engine_config",
    "engine_cpus",
    "exposure_warning",
    "load_api_key",
    "main",
    "parse_args",
]

log = get_logger("week2.engine.server")
DTYPES = ("auto", "float32", "bfloat16", "float16")


API_KEY_ENV = "IE_API_KEY"


def default_of(cls: type, name: str) -> Any:
    """A field with the default of `cls`'s field `name` (written once, there)."""
    f = cls.__dataclass_fields__[name]
    if f.default_factory is not dataclasses.MISSING:
        return field(default_factory=lambda: str(f.default_factory()))
    return field(default=f.default)


def engine_default(name: str) -> Any:
    return default_of(EngineConfig, name)


def limit_default(name: str) -> Any:
    return default_of(ServingLimits, name)


def default_threads() -> int:
    return max(1, (os.cpu_count() or 1) - 1)


PolicyName = Literal[tuple(POLICIES)]  # --scheduling's choices: the scheduler's table


@dataclass
class ServerConfig:
    """Serve a model with our engine over an OpenAI-compatible HTTP API."""

    # an HF folder (week 1's export) or a hub id (org/name) of a family in engine/models
    # (Llama 2/3.x, Mistral, SmolLM2, Qwen2/2.5, Qwen3, GPT-2)
    model: str = engine_default("model")
    # resolve a hub id from the local cache only; None: offline only if HF_HUB_OFFLINE is set
    offline: bool | None = None
    device: str = engine_default("device")  # auto (cuda > mps > cpu), cpu, cuda or cuda:N
    # weights, activations and KV cache; auto: bfloat16 on a GPU that supports it or a CPU
    # with native BF16 (avx512_bf16 / amx_bf16), else float32
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = engine_default("dtype")
    # KV cache storage: auto (the --dtype), int8 or fp8 (e4m3; where torch has it on the device)
    kv_cache_dtype: Literal[KV_CACHE_DTYPES] = engine_default("kv_cache_dtype")
    served_model_name: str | None = None  # name in the API; None: the --model value
    host: str = "127.0.0.1"  # address to bind
    port: int = 8000  # port to listen on
    # a file holding the API key (else IE_API_KEY; no key: the API is open)
    api_key_file: str | None = None
    metrics_public: bool = limit_default("metrics_public")  # /metrics answers without the key
    # requests waiting for the engine beyond which a new one gets 429 (none: no bound)
    max_num_waiting: int | None = limit_default("max_num_waiting")
    # seconds a request may take, queueing included, then 504 (none: no limit)
    request_timeout: float | None = limit_default("request_timeout")
    max_body_bytes: int = limit_default("max_body_bytes")  # larger request bodies get 413
    block_size: int = engine_default("block_size")  # tokens per KV block
    num_kv_blocks: int | None = None  # KV pool size in blocks; None: from --kv-cache-memory
    # KV pool size in GiB (vLLM CPU's VLLM_CPU_KVCACHE_SPACE); blocks = GiB / bytes per block
    kv_cache_memory: float = engine_default("kv_cache_memory")
    kv_cache_gib: float | None = None  # the older name of --kv-cache-memory; given, it wins
    max_num_seqs: int = engine_default("max_num_seqs")  # requests running at once
    max_num_batched_tokens: int = engine_default("max_num_batched_tokens")  # tokens per step
    max_model_len: int | None = None  # context length; None: the model's
    enable_prefix_caching: bool = engine_default("enable_prefix_caching")  # reuse shared prefixes
    enforce_eager: bool = engine_default("enforce_eager")  # no CUDA graphs (off on CPU anyway)
    # CPU: attention by one C++ op per layer reading K/V in place (engine/paged_cpu.py; built
    # with the machine's compiler at the first start, about a minute). Default: on where it
    # applies and builds, else SDPA; --paged-kernel: required; --no-paged-kernel: SDPA
    paged_kernel: bool | None = engine_default("paged_kernel")
    # CPU: projection weights laid out once for oneDNN (twice the weights' memory). Default:
    # on a CPU whose PyTorch has oneDNN; --no-prepacked-linears: the plain weights only
    prepacked_linears: bool | None = engine_default("prepacked_linears")
    # CPU: RMSNorm (and the residual add before it) as one C++ call, built with the paged op.
    # Default: on where it builds for an RMSNorm model; --no-fused-norms: the plain ops
    fused_norms: bool | None = engine_default("fused_norms")
    # ablation (CPU): plan the next decode step in a helper thread while this one's forward
    # runs (mini-sglang's overlap scheduling; engine/overlap.py). Measured in engine/levers.py
    overlap_scheduling: bool = engine_default("overlap_scheduling")
    # torch.compile each block's dense parts, compiled at start (about 30 s; a C++ compiler on
    # the CPU); not with LoRA adapters or --prepacked-linears. Measured in engine/levers.py
    torch_compile: bool = engine_default("torch_compile")
    # continuous (requests join and leave every step), static (a batch at a time), sequential
    scheduling: PolicyName = engine_default("scheduling")
    # torch threads for the forward pass; default: all cores but one, which the event loop and,
    # in a benchmark on the same machine, the client need
    threads: int = field(default_factory=default_threads)
    # cores for the engine thread, e.g. '0' or '0,1'; 'auto': all but the last when there are
    # 2 or more, as vLLM's CPU build binds its worker; 'all': no binding
    engine_cpus: str = "auto"
    # cores for the rest of the server (event loop, tokenizer): 'rest' = those the engine thread
    # does not get (the forward never shares its core with the HTTP work), 'all': no binding
    loop_cpus: Literal["all", "rest"] = "all"
    # seconds a thread may hold the GIL while another waits for it (sys.setswitchinterval);
    # shorter: the engine thread gets it back sooner from the event loop. None: Python's 5 ms
    switch_interval: float | None = None
    # streamed text from each token's bytes for byte-level BPE tokenizers (the same text, one
    # dict lookup per token instead of two tokenizer decodes); others decode as before
    fast_detokenize: bool = True
    # run the engine core in its own process (as vLLM's EngineCore): the HTTP event loop no
    # longer shares the GIL with step()
    engine_process: bool = False
    # LoRA adapters served beside the base model, NAME=PEFT_FOLDER each; a request picks one
    # with "model": NAME (lora/)
    lora_modules: list[str] = field(default_factory=list)
    enable_lora: bool = False  # serve LoRA adapters (implied by --lora-modules), load at runtime
    max_loras: int = 1  # adapters in the weight slots at once (one step mixes at most this many)
    max_lora_rank: int = 16  # the largest rank an adapter may have
    max_cpu_loras: int | None = None  # adapters kept in host memory; none: --max-loras

    # speculative decoding: off, ngram (prompt lookup) or draft (a smaller model, --draft-model)
    speculative_method: Literal["off", "ngram", "draft"] = "off"
    num_speculative_tokens: int = 3  # tokens guessed per step, verified in one forward (1..16)
    spec_ngram_min: int = 1  # ngram: shortest suffix n-gram looked up
    spec_ngram_max: int = 4  # ngram: longest suffix n-gram looked up
    draft_model: str | None = None  # draft: HF folder of a smaller model with the same tokenizer

    def __post_init__(self) -> None:
        self.limits()  # a bad limit is a usage error naming it
        self.lora_config()  # so is a bad LoRA flag
        self.spec_config()  # and bad speculative-decoding numbers (engine/spec/config.py)
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port={self.port}: use 1..65535")
        sizes = {"block_size": 1024, "max_num_seqs": 65536, "threads": 4096}
        sizes["max_num_batched_tokens"] = 1 << 24
        for name, most in sizes.items():  # bounded: a typo must not become a huge allocation
            value = getattr(self, name)
            if not 1 <= value <= most:
                raise ValueError(f"{name}={value}: use an integer in 1..{most}")
        si = self.switch_interval
        if si is not None and not (isinstance(si, float) and math.isfinite(si) and 1e-6 <= si <= 1):
            raise ValueError(f"switch_interval={si}: use seconds in 1e-6..1, or none")
        if self.num_kv_blocks is not None and not 1 <= self.num_kv_blocks <= 1 << 24:
            raise ValueError(f"num_kv_blocks={self.num_kv_blocks}: use 1..{1 << 24}, or none")
        for name in ("kv_cache_memory", "kv_cache_gib"):
            gib = getattr(self, name)
            if gib is not None and not (math.isfinite(gib) and gib > 0):
                raise ValueError(f"{name}={gib}: use a finite number of GiB > 0")

    def lora_config(self) -> LoRAConfig | None:
        """The engine's LoRA settings (None: LoRA off); ValueError naming a bad flag."""
        modules = parse_modules(self.lora_modules)
        cfg = LoRAConfig(modules, self.max_loras, self.max_lora_rank, self.max_cpu_loras)
        return cfg if self.enable_lora or modules else None

    def spec_config(self) -> SpecConfig | None:
        method = self.speculative_method
        spec = SpecConfig(  # checked with speculation off too: a bad number is still a mistake
            "ngram" if method == "off" else method, self.num_speculative_tokens,
            self.spec_ngram_min, self.spec_ngram_max, self.draft_model,
        )  # fmt: skip
        return None if method == "off" else spec

    def limits(self) -> ServingLimits:
        names = [f.name for f in dataclasses.fields(ServingLimits)]
        return ServingLimits(**{n: getattr(self, n) for n in names})


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    parser = build_parser(ServerConfig, description=__doc__)
    parser.add_argument("--api-key", help=f"refused: set {API_KEY_ENV} or use --api-key-file")
    args = parser.parse_args(argv)
    if getattr(args, "api_key", None) is not None:
        parser.error(
            f"--api-key is not accepted: a key on the command line shows in `ps` and in logs; "
            f"set it in the environment ({API_KEY_ENV}=...) or pass --api-key-file FILE"
        )
    vars(args).pop("api_key", None)
    try:
        return config_from_args(ServerConfig, args)
    except (ValueError, TypeError) as err:
        parser.error(str(err))
        raise


def load_api_key(cfg: ServerConfig) -> str | None:
    """The key from --api-key-file, else from IE_API_KEY; None: no key (the API is open)."""
    if cfg.api_key_file is None:
        return os.environ.get(API_KEY_ENV, "").strip() or None
    path = Path(cfg.api_key_file).expanduser()
    try:
        key = path.read_text().strip()
    except OSError as e:
        raise SystemExit(f"--api-key-file {path}: cannot read it ({e.strerror})") from None
    if not key:
        raise SystemExit(f"--api-key-file {path}: the file is empty; write the key in it")
    return key


def exposure_warning(host: str, has_key: bool) -> str | None:
    """A warning when the server listens beyond this machine with no key (None: fine)."""
    if has_key or host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # a host name: it may resolve to anything
        pass
    return (
        f"--host {host} without an API key: anyone who reaches this port can use the server; "
        f"set {API_KEY_ENV} or --api-key-file, or bind 127.0.0.1"
    )


def engine_config(a: ServerConfig) -> EngineConfig:
    """The engine's config from the command line; a bad --device/--dtype stops here, with the
    value and what to use, before any weights load."""
    try:
        return EngineConfig(
            model=a.model,
            block_size=a.block_size,
            num_blocks=a.num_kv_blocks,
            kv_cache_memory=a.kv_cache_memory if a.kv_cache_gib is None else a.kv_cache_gib,
            max_num_seqs=a.max_num_seqs,
            max_num_batched_tokens=a.max_num_batched_tokens,
            max_model_len=a.max_model_len,
            enable_prefix_caching=a.enable_prefix_caching,
            enforce_eager=a.enforce_eager,
            paged_kernel=a.paged_kernel,
            prepacked_linears=a.prepacked_linears,
            torch_compile=a.torch_compile,
            fused_norms=a.fused_norms,
            overlap_scheduling=a.overlap_scheduling,
            scheduling=a.scheduling,
            max_num_waiting=a.max_num_waiting or 0,  # the engine's bound: 0 means none
            served_model_name=a.served_model_name or str(a.model),
            device=a.device,
            dtype=a.dtype,
            kv_cache_dtype=a.kv_cache_dtype,
            offline=a.offline,
            lora=a.lora_config(),
            speculative=a.spec_config(),
        )
    except ValueError as e:
        where = (
            f"--device {a.device!r} / --dtype {a.dtype!r} / --kv-cache-dtype {a.kv_cache_dtype!r}"
            + (" / --paged-kernel" if a.paged_kernel else "")
        )
        raise SystemExit(f"{where}: {e}") from None


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

    api_key = load_api_key(cfg)
    torch.set_num_threads(cfg.threads)
    cpus = engine_cpus(cfg.engine_cpus)
    core = None  # --engine-process: the engine in a process of its own (core_client.py)
    if cfg.engine_process:
        core = CoreClient(engine_config(cfg), cpus, cfg.threads, cfg.max_num_waiting)
        # runs before multiprocessing's own exit handler (which would wait on the core forever):
        # a second Ctrl-C or an error before uvicorn starts still stops and joins the core
        atexit.register(core.shutdown)
    try:
        engine = core.launch() if core else LLMEngine(engine_config(cfg))
    except (FileNotFoundError, ValueError) as e:  # not found / not cached, unsupported model
        raise SystemExit(f"--model {cfg.model!r} / --lora-modules: {e}") from None
    apply_loop_settings(cfg, cpus)
    name = cfg.served_model_name or cfg.model
    app = create_app(engine, name, api_key, cpus, cfg.limits(), bridge=core)
    # Everything alive now (torch, transformers, the weights' Python objects) lives as long as
    # the server: take it out of the garbage collector's reach, so a full collection does not
    # stall every stream for a few hundred ms under load (vLLM does the same).
    gc.collect()
    gc.freeze()
    where = sorted(cpus) if cpus else "any"
    log.info(
        "serving %s on http://%s:%d (engine thread on cores %s)", name, cfg.host, cfg.port, where
    )
    warning = exposure_warning(cfg.host, api_key is not None)
    if warning:
        log.warning(warning)
    run_until_engine_dies(app, cfg.host, cfg.port)


def apply_loop_settings(cfg: ServerConfig, cpus: set[int] | None) -> None:
    """--fast-detokenize, --switch-interval and --loop-cpus, set on this (the main) thread before the engine thread
    starts; the engine thread binds itself to `cpus` when it runs."""
    import sys

    fast_detokenizer.set_enabled(cfg.fast_detokenize)
    if cfg.switch_interval is not None:
        sys.setswitchinterval(cfg.switch_interval)
    rest = set(os.sched_getaffinity(0)) - (cpus or set())
    if (cfg.loop_cpus == "rest" or cfg.engine_process) and rest:  # a core process: always
        os.sched_setaffinity(0, rest)


if __name__ == "__main__":
    main(parse_args())
