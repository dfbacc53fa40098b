"""Structured output, end to end: every answer valid, and what the mask costs per token.

    python -m week2_serving.engine.structured_bench                        # 200 + 200 requests
    python -m week2_serving.engine.structured_bench --preset smoke         # 8 + 8, for a check
    python -m week2_serving.engine.structured_bench --model runs/week1/hf-model

1. Starts our engine server (127.0.0.1, a free port; stopped on every exit path) and sends
   `num_requests` JSON-schema requests (schema_check.BOUNDED_SCHEMA: nested object, enums, an
   array; half via /v1/completions + response_format, half via /v1/chat/completions) and as
   many regex requests (structured_outputs.regex), `concurrency` at a time, sampled with a seed
   each. Every answer must finish with "stop" and parse and validate (the schema), or
   fullmatch (the regex); the counts go to results.json.
2. Offline, in this process after the server stopped: the same prompts with and without the
   schema's grammar, `repeats` times each, alternating: output tokens/s both ways, and the
   mask's own time per token (fill xgrammar's bitmask + apply it), median and range.

Writes runs/week2/structured/results.json.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from common.cli import parse
from common.results import get_logger, runs_root, save_results
from common.server import ManagedServer, free_port
from week2_serving.engine.schema_check import BOUNDED_REGEX, BOUNDED_SCHEMA, schema_errors

log = get_logger("week2.structured_bench")
PROMPTS = ["The list type", "A dict is", "def f(x):", "import os", "Python is", "class A:"]
COMPACT = {"disable_any_whitespace": True}


@dataclass
class StructuredBenchConfig:
    model: str = str(runs_root() / "week1" / "hf-model")  # HF folder or cached hub id
    num_requests: int = 200  # requests of each kind (JSON schema, regex)
    concurrency: int = 16  # requests in flight at once
    max_tokens: int = 100  # per request: far above the bounded outputs' longest
    repeats: int = 3  # offline with / without grammar runs (median and range reported)
    offline_prompts: int = 8  # sequences per offline run
    timeout_s: float = 300.0  # server start and each request

    def __post_init__(self) -> None:
        for name in ("num_requests", "concurrency", "max_tokens", "repeats", "offline_prompts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10_000:
                raise ValueError(f"{name}={value!r}: use an integer in 1..10000")
        if not 0 < self.timeout_s < 3600:
            raise ValueError(f"timeout_s={self.timeout_s}: use 0 < seconds < 3600")


PRESETS = {"smoke": {"num_requests": 8, "concurrency": 4, "repeats": 1, "offline_prompts": 4}}


def request_body(kind: str, i: int, cfg: StructuredBenchConfig) -> tuple[str, dict]:
    """(path, body) of request i of a kind: sampled, its own seed, a prompt from the list."""
    body = {"model": "bench", "max_tokens": cfg.max_tokens, "temperature": 1.0, "seed": i}
    prompt = PROMPTS[i % len(PROMPTS)]
    if kind == "regex":
        return "/v1/completions", {
            **body,
            "prompt": prompt,
            "structured_outputs": {"regex": BOUNDED_REGEX},
        }  # noqa: E501
    fmt = {"type": "json_schema", "json_schema": {"name": "pet", "schema": BOUNDED_SCHEMA}}
    body |= {"response_format": fmt, "structured_outputs": COMPACT}
    if i % 2:
        return "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": prompt}]}
    return "/v1/completions", {**body, "prompt": prompt}


def check(kind: str, text: str) -> str | None:
    """None if the text is what the kind asks for, else what is wrong."""
    if kind == "regex":
        return None if re.fullmatch(BOUNDED_REGEX, text) else f"no fullmatch: {text!r}"
    try:
        errors = schema_errors(json.loads(text), BOUNDED_SCHEMA)
    except ValueError as e:
        return f"not JSON ({e}): {text!r}"
    return "; ".join(errors) or None


async def send_all(url: str, kind: str, cfg: StructuredBenchConfig) -> dict:
    """Send the kind's requests; count answers that are valid, invalid, or failed."""
    gate = asyncio.Semaphore(cfg.concurrency)
    tally = {"valid": 0, "invalid": 0, "failed": 0, "finish_reasons": {}, "examples": []}

    async def one(client: httpx.AsyncClient, i: int) -> None:
        path, body = request_body(kind, i, cfg)
        async with gate:
            r = await client.post(url + path, json=body)
        if r.status_code != 200:
            tally["failed"] += 1
            tally["examples"].append(f"HTTP {r.status_code}: {r.text[:200]}")
            return
        choice = r.json()["choices"][0]
        text = choice["message"]["content"] if "message" in choice else choice["text"]
        reason = choice["finish_reason"]
        tally["finish_reasons"][reason] = tally["finish_reasons"].get(reason, 0) + 1
        problem = check(kind, text) if reason == "stop" else f"finish_reason {reason}"
        tally["invalid" if problem else "valid"] += 1
        if problem or len(tally["examples"]) < 3:
            tally["examples"].append(problem or text)

    start = time.monotonic()
    async with httpx.AsyncClient(timeout=cfg.timeout_s) as client:
        await asyncio.gather(*(one(client, i) for i in range(cfg.num_requests)))
    tally["seconds"] = time.monotonic() - start
    tally["examples"] = tally["examples"][:10]
    return tally


def served(cfg: StructuredBenchConfig, out_dir: Path) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "week2_serving.engine.server", "--model", cfg.model]
    cmd += ["--port", str(port), "--served-model-name", "bench", "--dtype", "float32"]
    log_path = out_dir / "server.log"
    with ManagedServer(cmd, port, log_path, timeout_s=cfg.timeout_s) as srv:
        return {k: asyncio.run(send_all(srv.url, k, cfg)) for k in ("json_schema", "regex")}


def offline(cfg: StructuredBenchConfig) -> dict:
    """Tokens/s with the schema's grammar, and without it on the same prompts for exactly as
    many tokens each (ignore_eos, max_tokens = the grammar run's length: the same batches and
    steps), `repeats` times; and the mask's own time per token."""
    from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
    from week2_serving.engine.sequence import SamplingParams
    from week2_serving.engine.structured import Grammars, generate, make_spec

    engine = LLMEngine(EngineConfig(model=cfg.model, dtype="float32"))  # as the other benches
    grammars = Grammars(engine.tokenizer, engine.runner.cfg.vocab_size)
    spec = make_spec("json_schema", BOUNDED_SCHEMA, "json", any_whitespace=False)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(cfg.offline_prompts)]
    runs: dict[str, list[float]] = {"with_grammar": [], "without": [], "mask_us_per_token": []}
    for r in range(cfg.repeats):
        params = SamplingParams(max_tokens=cfg.max_tokens, temperature=1.0, seed=r)
        start = time.perf_counter()
        seqs = generate(engine, grammars, prompts, params, spec)
        runs["with_grammar"].append(tokens_per_s(seqs, time.perf_counter() - start))
        masks = sum(q.grammar.num_masks for q in seqs)
        runs["mask_us_per_token"].append(1e6 * sum(q.grammar.mask_seconds for q in seqs) / masks)
        same = [
            SamplingParams(max_tokens=q.num_output_tokens, temperature=1.0, seed=r, ignore_eos=True)
            for q in seqs
        ]
        start = time.perf_counter()
        plain = generate(engine, grammars, prompts, same, None)
        runs["without"].append(tokens_per_s(plain, time.perf_counter() - start))
    summary = {
        k: {"median": statistics.median(v), "min": min(v), "max": max(v), "runs": v}
        for k, v in runs.items()
    }
    summary["tokens_per_s_ratio"] = summary["with_grammar"]["median"] / summary["without"]["median"]
    summary["mask_share_of_time"] = (
        summary["mask_us_per_token"]["median"] * 1e-6 * summary["with_grammar"]["median"]
    )
    return summary


def tokens_per_s(seqs, seconds: float) -> float:
    return sum(q.num_output_tokens for q in seqs) / seconds


def main(cfg: StructuredBenchConfig) -> dict:
    from common.timing import environment  # torch: loaded here, so --help stays quick

    out_dir = runs_root() / "week2" / "structured"
    out_dir.mkdir(parents=True, exist_ok=True)
    answers = served(cfg, out_dir)
    cost = offline(cfg)
    results = {"config": asdict(cfg), "served": answers, "offline": cost, "env": environment()}
    results["all_valid"] = all(a["valid"] == cfg.num_requests for a in answers.values())
    path = save_results("week2", "structured", results)
    for kind, a in answers.items():
        log.info(
            "%s: %d/%d valid, %d invalid, %d failed, %.1f s",
            kind,
            a["valid"],
            cfg.num_requests,
            a["invalid"],
            a["failed"],
            a["seconds"],
        )
    log.info(
        "mask %.1f us/token; tokens/s with grammar %.1f, without %.1f (ratio %.2f)",
        cost["mask_us_per_token"]["median"],
        cost["with_grammar"]["median"],
        cost["without"]["median"],
        cost["tokens_per_s_ratio"],
    )
    log.info("results: %s", path)
    return results


if __name__ == "__main__":
    res = main(parse(StructuredBenchConfig, presets=PRESETS, description=__doc__))
    sys.exit(0 if res["all_valid"] else 1)
