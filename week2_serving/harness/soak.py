"""Soak a server: thousands of requests mixing the good, the abandoned and the hostile.

    python -m week2_serving.harness.soak                       # our engine, week 1's model
    python -m week2_serving.harness.soak --num-requests 500    # a shorter run

It starts our engine (or drives `--base-url`), sends `--num-requests` requests at
`--concurrency`, drawn from a mix: streaming, non-streaming, abandoned by the client after a
random fraction of a second, invalid (the set in `hostile.py`) and oversize (a prompt beyond the
context, a body beyond the server's limit). Afterwards it waits for the server to go idle and
checks what a production server must hold to:

- no 5xx and no dropped connection for any request the server received whole;
- every invalid or oversize request got a 4xx;
- no leaked KV blocks (the server's `vllm:kv_cache_usage_perc` back to 0, nothing running or
  waiting);
- `/health` is 200 and a good request is answered after the storm;
- resident memory growth of the server process from after the warm-up to the end (target < 10%).

The run writes runs/week2/soak/results.json (counts per kind and status, the checks) and exits 1
if a check fails.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from common.cli import parse
from common.procs import sigterm_as_interrupt
from common.results import get_logger, runs_root, write_results
from week2_serving.harness.hostile import hostile_bodies
from week2_serving.harness.launch import launch

log = get_logger("week2.soak")

KINDS = ("stream", "plain", "abandoned", "invalid", "oversize")


@dataclass
class SoakConfig:
    """Soak a server with a mix of good, abandoned and hostile requests."""

    model: str | None = None  # model our engine serves (default: runs/week1/hf-model)
    base_url: str | None = None  # drive this running server instead of starting our engine
    served_name: str = "soak"  # the model name requests use
    num_requests: int = 5000  # requests in the run (after the warm-up)
    concurrency: int = 64  # requests in flight at once
    warmup: int = 32  # good requests before memory is first measured
    max_tokens: int = 64  # upper bound of the random max_tokens of good requests
    abandon_after: float = 0.5  # abandoned requests give up after up to this many seconds
    max_body_bytes: int = 1 << 20  # the body limit given to our engine (oversize bodies exceed it)
    seed: int = 0  # the mix and the lengths are drawn from this seed
    out: str | None = None  # results folder (default: runs/week2/soak)
    # shares of each kind: stream, plain, abandoned, invalid, oversize
    mix: tuple[float, float, float, float, float] = (0.35, 0.3, 0.15, 0.1, 0.1)

    def __post_init__(self) -> None:
        for name in ("num_requests", "concurrency", "max_tokens", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if len(self.mix) != len(KINDS) or min(self.mix) < 0 or sum(self.mix) <= 0:
            raise ValueError(f"mix={self.mix}: give {len(KINDS)} non-negative shares")


def server_state(url: str) -> dict[str, float]:
    """Running, waiting and KV usage from the server's Prometheus /metrics (vLLM's names)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    wanted = {
        "vllm:num_requests_running": "running",
        "vllm:num_requests_waiting": "waiting",
        "vllm:kv_cache_usage_perc": "kv_usage",
    }
    state: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in wanted:
                state[wanted[sample.name]] = state.get(wanted[sample.name], 0.0) + sample.value
    return state


def wait_idle(url: str, timeout_s: float = 60.0) -> dict[str, float]:
    """Poll /metrics until nothing runs or waits and the KV cache is empty (or time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        state = server_state(url)
        idle = not state.get("running") and not state.get("waiting") and not state.get("kv_usage")
        if idle or time.monotonic() > deadline:
            return state
        time.sleep(0.2)


def rss_bytes(pid: int | None) -> int | None:
    """Resident memory of a process from /proc (None where there is no /proc or no pid)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def body_for(kind: str, cfg: SoakConfig, rng: random.Random, hostile: list) -> bytes:
    """The request body of one request of `kind`."""
    if kind == "invalid":
        return rng.choice(hostile)[1]
    if kind == "oversize":
        # half: a prompt far beyond any context of the tiny models; half: a body beyond the limit
        too_long, too_big = "word " * 50_000, "x" * (cfg.max_body_bytes + 1024)
        prompt = too_long if rng.random() < 0.5 else too_big
        return json.dumps({"model": cfg.served_name, "prompt": prompt, "max_tokens": 4}).encode()
    words = " ".join(rng.choice(["the", "a", "story", "of", "cat", "sky"]) for _ in range(20))
    body = {
        "model": cfg.served_name,
        "prompt": words,
        "max_tokens": rng.randint(1, cfg.max_tokens),
        "temperature": rng.choice([0.0, 0.7, 1.0]),
        "seed": rng.randint(0, 2**32),
        "stream": kind == "stream",
    }
    return json.dumps(body).encode()


async def send(client: httpx.AsyncClient, url: str, kind: str, body: bytes, give_up: float) -> str:
    """Send one request; the outcome is the status code, 'abandoned' or 'transport:<error>'."""
    headers = {"content-type": "application/json"}

    async def call() -> str:
        async with client.stream(
            "POST", url + "/v1/completions", content=body, headers=headers
        ) as r:
            async for _ in r.aiter_bytes():
                pass
            return str(r.status_code)

    try:
        if kind == "abandoned":
            try:
                return await asyncio.wait_for(call(), timeout=give_up)
            except TimeoutError:
                return "abandoned"
        return await call()
    except httpx.HTTPError as err:
        return f"transport:{type(err).__name__}"


async def storm(cfg: SoakConfig, url: str) -> Counter:
    """All requests of the run at `cfg.concurrency`; a Counter of (kind, outcome)."""
    rng = random.Random(cfg.seed)
    hostile = hostile_bodies(cfg.served_name)
    kinds = rng.choices(KINDS, weights=cfg.mix, k=cfg.num_requests)
    jobs = [
        (k, body_for(k, cfg, rng, hostile), rng.uniform(0.01, cfg.abandon_after)) for k in kinds
    ]
    outcomes: Counter = Counter()
    limit = asyncio.Semaphore(cfg.concurrency)
    bar = tqdm(total=len(jobs), desc="soak", unit="req")
    timeout = httpx.Timeout(120.0)
    limits = httpx.Limits(max_connections=cfg.concurrency * 2)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:

        async def run(kind: str, body: bytes, give_up: float) -> None:
            async with limit:
                outcomes[(kind, await send(client, url, kind, body, give_up))] += 1
                bar.update()

        await asyncio.gather(*(run(*job) for job in jobs))
    bar.close()
    return outcomes


def checks(outcomes: Counter, idle: dict, healthy: bool, answered: bool, growth: float | None):
    """Each named check of the run and whether it held."""
    server_errors = sum(n for (_, o), n in outcomes.items() if o.startswith("5"))
    dropped = sum(
        n for (k, o), n in outcomes.items() if o.startswith("transport") and k != "oversize"
    )
    refused_ok = all(
        o.startswith("4")
        for (k, o), _ in outcomes.items()
        if k in ("invalid", "oversize") and o[0].isdigit()
    )
    return {
        "no 5xx": server_errors == 0,
        "no dropped connection": dropped == 0,
        "invalid and oversize get 4xx": refused_ok,
        "no leaked KV blocks": not idle.get("kv_usage")
        and not idle.get("running")
        and not idle.get("waiting"),
        "healthy after": healthy,
        "good request answered after": answered,
        "memory growth < 10%": growth is None or growth < 0.10,
    }


def soak(cfg: SoakConfig, url: str, pid: int | None) -> dict:
    """Warm up, measure memory, storm, wait idle, measure again, check."""
    warm = SoakConfig(**{**asdict(cfg), "num_requests": cfg.warmup, "mix": (1, 1, 0, 0, 0)})
    asyncio.run(storm(warm, url))
    rss0 = rss_bytes(pid)
    t0 = time.perf_counter()
    outcomes = asyncio.run(storm(cfg, url))
    seconds = time.perf_counter() - t0
    idle = wait_idle(url)
    rss1 = rss_bytes(pid)
    growth = (rss1 - rss0) / rss0 if rss0 and rss1 else None
    healthy = httpx.get(url + "/health", timeout=10).status_code == 200
    good = {"model": cfg.served_name, "prompt": "Once upon a time", "max_tokens": 8}
    answered = httpx.post(url + "/v1/completions", json=good, timeout=60).status_code == 200
    result = checks(outcomes, idle, healthy, answered, growth)
    return {
        "config": asdict(cfg),
        "seconds": seconds,
        "outcomes": {f"{k} {o}": n for (k, o), n in sorted(outcomes.items())},
        "idle_state": idle,
        "rss_bytes": {"after_warmup": rss0, "after_soak": rss1},
        "rss_growth": growth,
        "checks": result,
        "passed": all(result.values()),
    }


def main(cfg: SoakConfig) -> dict:
    if cfg.base_url:
        results = soak(cfg, cfg.base_url.rstrip("/"), None)
    else:
        extra = ["--max-body-bytes", str(cfg.max_body_bytes), "--max-num-seqs", "32"]
        model = cfg.model or str(runs_root() / "week1" / "hf-model")
        with launch("engine", model, extra=extra, served_name=cfg.served_name) as srv:
            results = soak(cfg, srv.url, srv.proc.pid if srv.proc else None)
    out = Path(cfg.out) if cfg.out else runs_root() / "week2" / "soak"
    write_results(out / "results.json", results)
    for name, held in results["checks"].items():
        log.info("%-32s %s", name, "ok" if held else "FAILED")
    return results


if __name__ == "__main__":
    cfg = parse(SoakConfig, description=__doc__)
    with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: the server started is stopped
        passed = main(cfg)["passed"]
    sys.exit(0 if passed else 1)
