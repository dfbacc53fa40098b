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
never fatal. A run stopped by Ctrl-C or SIGTERM still writes what it measured (the requests
that finished, `interrupted` naming the signal, `unfinished` counting the rest). Writes
runs/week2/<run-name>/results.json. Workloads (`--dataset-name`) are the table in workloads.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import math
import signal
import time
from collections.abc import Callable
from dataclasses import asdict

import aiohttp
import httpx
from tqdm import tqdm

from common.cli import config_from_args
from common.hub import resolve_tokenizer
from common.procs import Terminated, sigterm_as_interrupt
from common.provenance import server_versions
from common.results import get_logger, save_results
from common.timing import environment
from week2_serving.harness.bench_config import BenchConfig, bench_parser, parse_goodput
from week2_serving.harness.client import Request, send_request
from week2_serving.harness.metrics import RequestRecord, compute_metrics
from week2_serving.harness.multiturn import ttft_by_turn
from week2_serving.harness.repeats import combine_runs, reset_prefix_cache
from week2_serving.harness.schedule import arrival_intervals, chains
from week2_serving.harness.tpot_weights import token_weighted_tpot
from week2_serving.harness.workloads import build_workload

__all__ = ["BenchConfig", "arrival_intervals", "main", "parse_args", "parse_goodput", "run_load"]

log = get_logger("week2.bench")
TAGS = ("conversation", "turn", "arrival_s")  # what a request records of its workload


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
    """The workload's requests (its entry in workloads.WORKLOADS builds them)."""
    reqs = build_workload(cfg, tokenizer)
    if cfg.backend == "openai-chat":  # the chat API takes text
        for r in reqs:
            if not isinstance(r.prompt, str):
                r.prompt = tokenizer.decode(r.prompt)
    return reqs


class Collected:
    """The measured requests' records, kept as each one finishes: what an interrupted run has."""

    def __init__(self, n: int):
        self.records: list[RequestRecord | None] = [None] * n
        self.start: float | None = None

    def finished(self) -> list[RequestRecord]:
        return [r for r in self.records if r is not None]

    def elapsed(self) -> float:
        return time.perf_counter() - self.start if self.start is not None else 0.0


async def run_load(
    cfg: BenchConfig,
    requests: list[Request],
    model: str,
    count_tokens,
    progress: bool = True,
    collected: Collected | None = None,
    warmups: int | None = None,
    before_run: Callable[[], object] | None = None,
) -> tuple[list[RequestRecord], float]:
    """Send `requests` as the schedule says (arrival process, trace times or conversations)
    under the concurrency cap; return every record and the run's wall time. `warmups` untimed
    requests go first (default cfg.num_warmups), then `before_run()` (e.g. a prefix-cache
    reset, so the warm-ups leave nothing behind). `collected` receives each record."""
    collected = collected or Collected(len(requests))
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

        for i in range(cfg.num_warmups if warmups is None else warmups):  # untimed
            warm = await one(requests[i % len(requests)])
            if not warm.success:
                log.warning("warmup request failed: %s", warm.error)
        if before_run is not None:
            before_run()
        bar = tqdm(total=len(requests), desc="requests", leave=False, disable=not progress)

        async def chain(offset: float, members: list[int]) -> None:
            """One chain of the schedule: wait for its start, then its requests in turn."""
            await asyncio.sleep(max(0.0, offset - collected.elapsed()))
            for k, i in enumerate(members):
                think = getattr(requests[i], "think_time_s", 0.0)
                if k and think > 0:
                    await asyncio.sleep(think)
                collected.records[i] = await one(requests[i])
                bar.update(1)

        plan = chains(requests, cfg.request_rate, cfg.burstiness, cfg.seed)
        collected.start = time.perf_counter()
        await asyncio.gather(*(chain(offset, members) for offset, members in plan))
        duration = collected.elapsed()
        bar.close()
    return collected.finished(), duration


def resolve_target(cfg: BenchConfig) -> tuple[str, str]:
    """(served model name, tokenizer folder or hub id): the config's, else the server's."""
    model, root = (
        (cfg.model, None) if cfg.model else discover_model(cfg.base_url, cfg.backend, cfg.api_key)
    )
    tok_path = cfg.tokenizer or root
    if tok_path is None:
        raise ValueError("the server did not say where its model lives; pass --tokenizer HF_FOLDER")
    return model, tok_path


def measure(
    cfg: BenchConfig,
    requests: list[Request],
    model: str,
    count,
    warmups: int | None = None,
    before_run: Callable[[], object] | None = None,
) -> tuple[list[RequestRecord], float, str | None]:
    """(records, duration, the signal that interrupted the run or None). Ctrl-C or SIGTERM
    (as `Terminated`) ends the run early; the requests that finished are kept."""
    collected = Collected(len(requests))
    # The client must not pause while streams arrive: a full garbage collection over the heap of
    # torch + transformers takes long enough to delay chunks and inflate TTFT. Move everything
    # alive now out of the collector's reach first (vLLM's benchmark does the same).
    gc.collect()
    gc.freeze()
    try:
        records, duration = asyncio.run(
            run_load(cfg, requests, model, count, True, collected, warmups, before_run)
        )
        return records, duration, None
    except KeyboardInterrupt as e:
        sig = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
        done = collected.finished()
        log.warning("interrupted by %s: %d of %d requests finished", sig, len(done), len(requests))
        return done, max(collected.elapsed(), 1e-9), sig
    finally:
        gc.unfreeze()


def run_all(
    cfg: BenchConfig, requests, model: str, tok_path: str, count
) -> tuple[dict, str | None]:
    """`cfg.num_runs` measured runs (warm-ups before the first only, the prefix cache reset
    before each when asked), combined: medians, with min–max in `spread`."""
    runs, resets, interrupted = [], [], None
    for k in range(cfg.num_runs):

        def reset(k: int = k) -> None:
            resets.append(reset_prefix_cache(cfg.base_url, cfg.api_key))
            if resets[-1] != "reset":
                log.warning("prefix cache not reset before run %d: %s", k + 1, resets[-1])

        warmups = cfg.num_warmups if k == 0 else 0
        before = reset if cfg.reset_prefix_cache else None
        records, duration, interrupted = measure(cfg, requests, model, count, warmups, before)
        runs.append(results_of(cfg, records, duration, model, tok_path, requests))
        if interrupted:
            break
    results = combine_runs(runs)
    turns = ttft_by_turn(results["requests"])  # every run pooled
    if turns:
        results["per_turn"] = turns
    if interrupted:
        results.update(interrupted=interrupted, unfinished=len(requests) - len(records))
    results["prefix_cache_reset"] = resets or "not asked"
    return results, interrupted


def main(cfg: BenchConfig) -> dict:
    """Run the benchmark; results.json holds what was measured, even if it was interrupted
    (then, after saving, the KeyboardInterrupt is raised again)."""
    model, tok_path = resolve_target(cfg)
    tokenizer = load_tokenizer(tok_path, cfg.offline)
    requests = build_requests(cfg, tokenizer)
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    log.info(
        "%d requests (%s) to %s, model %s, concurrency %s, rate %s, %d run(s)",
        len(requests),
        cfg.dataset_name,
        cfg.base_url,
        model,
        cfg.max_concurrency or "unlimited",
        cfg.request_rate,
        cfg.num_runs,
    )
    results, interrupted = run_all(cfg, requests, model, tok_path, count)
    log_summary(results)
    if cfg.save:
        save_results("week2", cfg.run_name, results)
    if interrupted:
        raise Terminated(interrupted) if interrupted == "SIGTERM" else KeyboardInterrupt()
    return results


def results_of(
    cfg: BenchConfig,
    records: list[RequestRecord],
    duration: float,
    model: str,
    tok_path: str,
    requests: list[Request] | None = None,
) -> dict:
    """The results document: vLLM-named metrics, the run's settings, every request's record
    (with its conversation and turn in a multi-turn load, and TTFT per turn)."""
    metrics = compute_metrics(records, duration, cfg.percentiles, cfg.goodput)
    rate = cfg.request_rate if math.isfinite(cfg.request_rate) else "inf"
    per_request = [r.to_dict() for r in records]
    if requests is not None and len(requests) == len(records):
        for d, req in zip(per_request, requests):
            d.update({k: getattr(req, k) for k in TAGS if hasattr(req, k)})
    results = {
        **metrics,
        **token_weighted_tpot(records, cfg.percentiles),
        "backend": cfg.backend,
        "model_id": model,
        "tokenizer_id": tok_path,
        "num_prompts": len(records),
        "max_concurrency": cfg.max_concurrency,
        "request_rate": rate,
        "burstiness": cfg.burstiness,
        "errors": sorted({r.error for r in records if not r.success})[:20],
        "config": {**asdict(cfg), "request_rate": rate},
        "server": cfg.server_info,
        "environment": environment(server_versions=server_versions(cfg.base_url, cfg.backend)),
        "requests": per_request,
    }
    return results


def log_summary(res: dict) -> None:
    log.info(
        "completed %d, failed %d in %.1fs: %.1f output tok/s, TTFT mean %.1f ms p99 %.1f ms, "
        "TPOT mean %.2f ms p99 %.2f ms",
        res["completed"],
        res["failed"],
        res["duration"],
        res["output_throughput"],
        res["mean_ttft_ms"],
        res["p99_ttft_ms"],
        res["mean_tpot_ms"],
        res["p99_tpot_ms"],
    )
    if res["errors"]:
        log.warning("errors (first of %d kinds): %s", len(res["errors"]), res["errors"][0])


def parse_args(argv: list[str] | None = None) -> BenchConfig:
    parser = bench_parser(__doc__)
    args = parser.parse_args(argv)
    if "goodput" in args:
        args.goodput = dict(args.goodput)
    try:
        return config_from_args(BenchConfig, args)
    except (TypeError, ValueError) as err:
        parser.error(str(err))
        raise


def cli(argv: list[str] | None = None) -> None:
    """`python -m`: SIGTERM unwinds like Ctrl-C; either one saves what was measured, exit 128+n."""
    cfg = parse_args(argv)
    with sigterm_as_interrupt():
        try:
            main(cfg)
        except KeyboardInterrupt as e:
            sig = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
            raise SystemExit(128 + sig) from None


if __name__ == "__main__":
    cli()
