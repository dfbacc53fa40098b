"""Load-test an OpenAI-compatible server (vLLM, SGLang, our engine) and measure it.

    python -m week2_serving.harness.launch vllm --model runs/week1/hf-model &     # or any server
    python -m week2_serving.harness.bench --base-url http://127.0.0.1:8000 --num-prompts 64 \
        --random-input-len 64 --random-output-len 64 --max-concurrency 8
    python -m week2_serving.harness.bench ... --request-rate 4 --burstiness 0.5  # Poisson-ish arrivals
    python -m week2_serving.harness.bench ... --dataset-name shared-prefix --prefix-len 256
    python -m week2_serving.harness.bench ... --goodput ttft:200 tpot:20          # SLOs in ms
    python -m week2_serving.harness.bench ... --tokenizer Qwen/Qwen2.5-0.5B-Instruct --offline  # cached id

Metrics and result field names follow `vllm bench serve` (see metrics.py). Every request's
record (timeline, token counts, error) is kept in results.json; failed requests are counted,
never fatal. Writes runs/week2/<run-name>/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import time
from dataclasses import asdict, dataclass, field

import aiohttp
import httpx
import numpy as np
from tqdm import tqdm

from common.hub import add_offline_arg, resolve_tokenizer
from common.provenance import server_versions
from common.results import get_logger, save_results
from common.timing import environment
from week2_serving.harness.client import BACKENDS, Request, send_request
from week2_serving.harness.metrics import DEFAULT_PERCENTILES, RequestRecord, compute_metrics
from week2_serving.harness.workloads import (
    WORKLOADS,
    file_requests,
    random_requests,
    shared_prefix_requests,
)

log = get_logger("week2.bench")


@dataclass
class BenchConfig:
    base_url: str = "http://127.0.0.1:8000"
    backend: str = "openai"  # openai | openai-chat | sglang
    model: str | None = None  # served model name; default: the first of /v1/models
    tokenizer: str | None = (
        None  # HF folder or hub id for token-exact prompts; default: the served model's path
    )
    dataset_name: str = "random"  # random | file | shared-prefix
    dataset_path: str | None = None
    num_prompts: int = 64
    random_input_len: int = 64
    random_output_len: int = 64
    random_range_ratio: float = 0.0
    random_output_dist: str = (
        "uniform"  # uniform | exponential (long-tailed, mean random_output_len)
    )
    prefix_len: int = 256  # shared-prefix workload
    suffix_len: int = 32
    num_prefixes: int = 4
    max_concurrency: int | None = None  # cap on requests in flight
    request_rate: float = math.inf  # requests/s; inf = send all at once (up to max_concurrency)
    burstiness: float = 1.0  # gamma shape of inter-arrival times: 1 = Poisson, <1 burstier
    seed: int = 0
    num_warmups: int = 2
    ignore_eos: bool = True
    goodput: dict[str, float] = field(default_factory=dict)  # SLOs in ms: {"ttft": 200, "tpot": 20}
    percentiles: tuple[float, ...] = DEFAULT_PERCENTILES
    request_timeout_s: float = 300.0
    api_key: str | None = None
    run_name: str | None = None
    save: bool = True
    server_info: dict = field(default_factory=dict)  # recorded as is (the launcher fills it)
    offline: bool | None = None  # True: a hub-id tokenizer must be cached; None: HF_HUB_OFFLINE

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend={self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.dataset_name not in WORKLOADS:
            raise ValueError(
                f"dataset_name={self.dataset_name!r}: use one of {', '.join(WORKLOADS)}"
            )
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts={self.num_prompts} must be >= 1")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ValueError(f"max_concurrency={self.max_concurrency} must be >= 1")
        if not self.request_rate > 0:
            raise ValueError(f"request_rate={self.request_rate} must be > 0 (inf = all at once)")
        if not self.burstiness > 0:
            raise ValueError(f"burstiness={self.burstiness} must be > 0")
        if self.dataset_name == "file" and not self.dataset_path:
            raise ValueError("dataset_name 'file' needs --dataset-path")
        if self.run_name is None:
            conc = self.max_concurrency or "inf"
            self.run_name = (
                f"bench-{self.backend}-{self.dataset_name}-c{conc}-r{self.request_rate:g}"
            )


def arrival_intervals(n: int, rate: float, burstiness: float, seed: int = 0) -> np.ndarray:
    """Seconds to wait before each request. Gamma(shape=b, scale=1/(rate·b)): mean 1/rate,
    variance 1/(rate²·b); b = 1 is a Poisson process (exponential gaps). rate = inf: no waits."""
    if math.isinf(rate):
        return np.zeros(n)
    rng = np.random.default_rng(seed)
    return rng.gamma(shape=burstiness, scale=1.0 / (rate * burstiness), size=n)


def discover_model(
    base_url: str, backend: str, api_key: str | None = None
) -> tuple[str, str | None]:
    """(served model name, its path if the server says) from /v1/models or SGLang's /get_model_info."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        if backend == "sglang":
            info = httpx.get(
                base_url.rstrip("/") + "/get_model_info", headers=headers, timeout=10
            ).json()
            return info.get("model_path", "default"), info.get("tokenizer_path") or info.get(
                "model_path"
            )
        data = httpx.get(base_url.rstrip("/") + "/v1/models", headers=headers, timeout=10).json()[
            "data"
        ]
    except (httpx.HTTPError, KeyError, ValueError) as e:
        raise RuntimeError(
            f"could not list the models of the server at {base_url} ({e}); is it running?"
        ) from e
    base = next((m for m in data if not m.get("parent")), data[0])
    return base["id"], base.get("root")


def load_tokenizer(name_or_path: str, offline: bool | None = None):
    """The tokenizer of an HF folder or of a hub id (only its tokenizer files are fetched;
    offline, from the hub cache)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_tokenizer(name_or_path, offline))


def build_requests(cfg: BenchConfig, tokenizer) -> list[Request]:
    if cfg.dataset_name == "random":
        reqs = random_requests(
            tokenizer,
            cfg.num_prompts,
            cfg.random_input_len,
            cfg.random_output_len,
            cfg.random_range_ratio,
            cfg.seed,
            cfg.ignore_eos,
            cfg.random_output_dist,
        )
    elif cfg.dataset_name == "shared-prefix":
        reqs = shared_prefix_requests(
            tokenizer,
            cfg.num_prompts,
            cfg.num_prefixes,
            cfg.prefix_len,
            cfg.suffix_len,
            cfg.random_output_len,
            cfg.seed,
            cfg.ignore_eos,
        )
    else:
        reqs = file_requests(
            cfg.dataset_path,
            tokenizer,
            cfg.num_prompts,
            cfg.random_output_len,
            ignore_eos=cfg.ignore_eos,
        )
    if cfg.backend == "openai-chat":  # the chat API takes text
        for r in reqs:
            if not isinstance(r.prompt, str):
                r.prompt = tokenizer.decode(r.prompt)
    return reqs


async def run_load(
    cfg: BenchConfig, requests: list[Request], model: str, count_tokens, progress: bool = True
) -> tuple[list[RequestRecord], float]:
    """Send `requests` with the configured arrival process and concurrency cap."""
    limit = asyncio.Semaphore(cfg.max_concurrency) if cfg.max_concurrency else None
    timeout = aiohttp.ClientTimeout(total=cfg.request_timeout_s, connect=10.0)
    # Keep-alive connections are reused, but never after 3 s idle: uvicorn (vLLM's and our
    # engine's server) closes idle connections after 5 s, and a request sent on a connection the
    # server is closing fails with "Server disconnected" before it ever reached the server.
    connector = aiohttp.TCPConnector(
        limit=cfg.max_concurrency or 0, force_close=False, keepalive_timeout=3.0
    )
    async with aiohttp.ClientSession(
        timeout=timeout, connector=connector, read_bufsize=2**20
    ) as client:

        async def one(req: Request) -> RequestRecord:
            async with limit or contextlib.nullcontext():
                return await send_request(
                    client, cfg.base_url, cfg.backend, model, req, count_tokens, cfg.api_key
                )

        for i in range(cfg.num_warmups):  # untimed: first-request costs (compilation, caches)
            warm = await one(requests[i % len(requests)])
            if not warm.success:
                log.warning("warmup request failed: %s", warm.error)
        bar = tqdm(total=len(requests), desc="requests", leave=False, disable=not progress)
        waits = arrival_intervals(len(requests), cfg.request_rate, cfg.burstiness, cfg.seed)
        start = time.perf_counter()
        tasks = []
        for req, wait in zip(requests, waits):
            if wait > 0:
                await asyncio.sleep(wait)
            task = asyncio.create_task(one(req))
            task.add_done_callback(lambda _: bar.update(1))
            tasks.append(task)
        records = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        bar.close()
    return list(records), duration


def main(cfg: BenchConfig) -> dict:
    model, root = (
        (cfg.model, None) if cfg.model else discover_model(cfg.base_url, cfg.backend, cfg.api_key)
    )
    tok_path = cfg.tokenizer or root
    if tok_path is None:
        raise ValueError("the server did not say where its model lives; pass --tokenizer HF_FOLDER")
    tokenizer = load_tokenizer(tok_path, cfg.offline)
    requests = build_requests(cfg, tokenizer)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    log.info(
        "%d requests (%s) to %s, model %s, concurrency %s, rate %s",
        len(requests),
        cfg.dataset_name,
        cfg.base_url,
        model,
        cfg.max_concurrency or "unlimited",
        cfg.request_rate,
    )
    # The client must not pause while streams arrive: a full garbage collection over the heap of
    # torch + transformers takes long enough to delay chunks and inflate TTFT. Move everything
    # alive now out of the collector's reach first (vLLM's benchmark does the same).
    gc.collect()
    gc.freeze()
    try:
        records, duration = asyncio.run(run_load(cfg, requests, model, count))
    finally:
        gc.unfreeze()
    metrics = compute_metrics(records, duration, cfg.percentiles, cfg.goodput)
    errors = sorted({r.error for r in records if not r.success})
    results = {
        **metrics,
        "backend": cfg.backend,
        "model_id": model,
        "tokenizer_id": tok_path,
        "num_prompts": len(requests),
        "max_concurrency": cfg.max_concurrency,
        "request_rate": cfg.request_rate if math.isfinite(cfg.request_rate) else "inf",
        "burstiness": cfg.burstiness,
        "errors": errors[:20],
        "config": asdict(cfg),
        "server": cfg.server_info,
        "environment": environment(server_versions=server_versions(cfg.base_url, cfg.backend)),
        "requests": [r.to_dict() for r in records],
    }
    results["config"]["request_rate"] = results["request_rate"]
    log.info(
        "completed %d, failed %d in %.1fs: %.1f output tok/s, TTFT mean %.1f ms p99 %.1f ms, "
        "TPOT mean %.2f ms p99 %.2f ms",
        metrics["completed"],
        metrics["failed"],
        duration,
        metrics["output_throughput"],
        metrics["mean_ttft_ms"],
        metrics["p99_ttft_ms"],
        metrics["mean_tpot_ms"],
        metrics["p99_tpot_ms"],
    )
    if errors:
        log.warning("errors (first of %d kinds): %s", len(errors), errors[0])
    if cfg.save:
        save_results("week2", cfg.run_name, results)
    return results


def parse_goodput(items: list[str] | None) -> dict[str, float]:
    out = {}
    for item in items or []:
        key, _, value = item.partition(":")
        if key not in ("ttft", "tpot", "e2el") or not value:
            raise argparse.ArgumentTypeError(f"--goodput {item!r}: use ttft:MS, tpot:MS or e2el:MS")
        out[key] = float(value)
    return out


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--base-url", default="http://127.0.0.1:8000")
    p.add_argument("--backend", choices=BACKENDS, default="openai")
    p.add_argument("--model", default=None, help="served model name (default: ask the server)")
    p.add_argument(
        "--tokenizer", default=None, help="HF folder or hub id (default: the served model's path)"
    )
    add_offline_arg(p)
    p.add_argument("--dataset-name", choices=WORKLOADS, default="random")
    p.add_argument(
        "--dataset-path", default=None, help="JSONL / ShareGPT file for --dataset-name file"
    )
    p.add_argument("--num-prompts", type=int, default=64)
    p.add_argument("--random-input-len", type=int, default=64)
    p.add_argument("--random-output-len", type=int, default=64)
    p.add_argument("--random-range-ratio", type=float, default=0.0)
    p.add_argument(
        "--random-output-dist",
        choices=("uniform", "exponential"),
        default="uniform",
        help="output lengths: uniform (vLLM's) or exponential with a long tail (capped at 6x)",
    )
    p.add_argument("--prefix-len", type=int, default=256)
    p.add_argument("--suffix-len", type=int, default=32)
    p.add_argument("--num-prefixes", type=int, default=4)
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--request-rate", type=float, default=math.inf)
    p.add_argument("--burstiness", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-warmups", type=int, default=2)
    p.add_argument("--no-ignore-eos", dest="ignore_eos", action="store_false")
    p.add_argument("--goodput", nargs="*", default=None, help="SLOs, e.g. ttft:200 tpot:20 (ms)")
    p.add_argument("--metric-percentiles", default="50,90,99")
    p.add_argument("--request-timeout", type=float, default=300.0)
    p.add_argument("--api-key", default=None)
    p.add_argument("--run-name", default=None)
    a = p.parse_args(argv)
    return BenchConfig(
        base_url=a.base_url,
        backend=a.backend,
        model=a.model,
        tokenizer=a.tokenizer,
        dataset_name=a.dataset_name,
        dataset_path=a.dataset_path,
        num_prompts=a.num_prompts,
        random_input_len=a.random_input_len,
        random_output_len=a.random_output_len,
        random_range_ratio=a.random_range_ratio,
        random_output_dist=a.random_output_dist,
        prefix_len=a.prefix_len,
        suffix_len=a.suffix_len,
        num_prefixes=a.num_prefixes,
        max_concurrency=a.max_concurrency,
        request_rate=a.request_rate,
        burstiness=a.burstiness,
        seed=a.seed,
        num_warmups=a.num_warmups,
        ignore_eos=a.ignore_eos,
        goodput=parse_goodput(a.goodput),
        percentiles=tuple(float(x) for x in a.metric_percentiles.split(",")),
        request_timeout_s=a.request_timeout,
        api_key=a.api_key,
        run_name=a.run_name,
        offline=a.offline,
    )


if __name__ == "__main__":
    main(parse_args())
