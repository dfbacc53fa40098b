"""What the HTTP server costs: the same load offline and through our server, in one run.

    python -m week2_serving.engine.http_profile                       # c8 and c32, ~4 min
    python -m week2_serving.engine.http_profile --loads 8 --num-prompts 16   # a quick look
    python -m week2_serving.engine.http_profile --variants "plain=--no-fast-detokenize" "fast="

For each concurrency C (the bench's c8 / c32 loads: random 16-token prompts, 128 output tokens,
ignore_eos, float32, one torch thread):

(a) offline: the engine alone, `max_num_seqs=C`, all prompts queued (a closed loop of C running
    requests, as the client keeps C in flight), its thread bound to the core the server's engine
    thread gets (`--engine-cpus auto`);
(b) HTTP: our server (one per variant: its extra flags), driven by the harness client
    (week2_serving.harness.bench, streaming) exactly as the sweep drives it.

The ratio (b)/(a) of output tokens/s is what the server costs; the engine thread's mean step
time while serving (it logs it at shutdown) against the offline step says whether the cost is
in the steps themselves (the event loop holding the GIL while the engine thread waits for it)
or between them. Writes runs/week2/<run_name>/results.json.
"""

from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from common.cli import parse
from common.results import get_logger, runs_root, save_results
from common.timing import environment
from week2_serving.engine.async_engine import STEP_LOG_ENV as STEP_LOG
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.sequence import SamplingParams

log = get_logger("week2.engine.http_profile")
STEP_LINE = re.compile(
    r"engine thread: (\d+) steps, mean step ([0-9.]+) ms, ([0-9.]+) tokens per step, "
    r"busy ([0-9.]+)%"
)


@dataclass
class HttpProfileConfig:
    """The bench's c8 / c32 loads offline and over HTTP, side by side."""

    model: str = field(default_factory=lambda: str(runs_root() / "week1" / "hf-model"))
    loads: list[int] = field(default_factory=lambda: [8, 32])  # concurrencies
    num_prompts: int = 64  # requests per load (the bench's c8 has 64, c32 128)
    input_len: int = 16  # random prompt tokens
    output_len: int = 128  # output tokens per request (ignore_eos)
    # server variants, NAME=EXTRA_FLAGS each (flags after --dtype float32)
    variants: list[str] = field(default_factory=lambda: ["default="])
    repeats: int = 2  # offline + HTTP pairs per load and variant
    seed: int = 0
    run_name: str = "engine-http-profile"  # runs/week2/<run_name>/

    def __post_init__(self) -> None:
        for name in ("num_prompts", "input_len", "output_len", "repeats"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
                raise ValueError(f"{name}={value!r}: use an integer in 1..4096")
        if not self.loads or any(not 1 <= c <= 256 for c in self.loads):
            raise ValueError(f"loads={self.loads}: give concurrencies in 1..256")
        for v in self.variants:
            if "=" not in v:
                raise ValueError(f"variant {v!r}: write NAME=FLAGS (FLAGS may be empty)")


def engine_core() -> set[int]:
    """The cores `--engine-cpus auto` gives the server's engine thread."""
    allowed = sorted(os.sched_getaffinity(0))
    return set(allowed[:-1]) if len(allowed) > 1 else set(allowed)


def offline(cfg: HttpProfileConfig, concurrency: int) -> dict:
    """Output tokens/s and mean step time of the engine alone on the load."""
    ecfg = EngineConfig(
        model=cfg.model, max_num_seqs=concurrency, num_blocks=4096, device="cpu", dtype="float32"
    )
    eng = LLMEngine(ecfg)
    rng = random.Random(cfg.seed)
    vocab = eng.runner.cfg.vocab_size
    params = SamplingParams(max_tokens=cfg.output_len, ignore_eos=True)
    for warm in (True, False):
        n = 2 if warm else cfg.num_prompts
        for _ in range(n):
            eng.add_request([rng.randrange(1, vocab) for _ in range(cfg.input_len)], params)
        steps = tokens = 0
        start = time.perf_counter()
        while eng.has_unfinished():
            tokens += sum(len(o.new_token_ids) for o in eng.step())
            steps += 1
        wall = time.perf_counter() - start
    return {
        "output_throughput": tokens / wall,
        "mean_step_ms": 1e3 * wall / steps,
        "tokens_per_step": tokens / steps,
    }


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds (user + system) of each thread of process `pid` and of its children (an
    engine core process, --engine-process), by thread id (Linux)."""
    tick, out = os.sysconf("SC_CLK_TCK"), {}
    kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    dirs = [Path(f"/proc/{p}/task") for p in [pid, *kids]]  # not /proc/P/stat: all its threads
    for task, tid in [(d, t) for d in dirs if d.exists() for t in os.listdir(d)]:
        try:
            fields = (task / tid / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return out


def cpu_split(pid: int, before: dict[int, float], tokens: int) -> dict:
    """CPU µs per output token of the server's main thread (the event loop: HTTP, streaming,
    detokenizing) and of its busiest other thread (the engine thread) over a run."""
    after = thread_cpu(pid)
    used = {t: after[t] - before.get(t, 0.0) for t in after}
    engine = max((v for t, v in used.items() if t != pid), default=0.0)
    return {
        "loop_cpu_us_per_token": 1e6 * used.get(pid, 0.0) / tokens,
        "engine_cpu_us_per_token": 1e6 * engine / tokens,
    }


def over_http(server, cfg: HttpProfileConfig, concurrency: int) -> dict:
    """Output tokens/s of a running server of ours on the load (harness client), and its engine
    thread's account of the run's busy period (the longest one it logged during the run)."""
    from week2_serving.harness.bench import BenchConfig
    from week2_serving.harness.bench import main as bench

    seen = len(server.log_path.read_text())
    bcfg = BenchConfig(
        base_url=server.url, model="m", tokenizer=cfg.model, num_prompts=cfg.num_prompts,
        random_input_len=cfg.input_len, random_output_len=cfg.output_len,
        max_concurrency=concurrency, seed=cfg.seed, save=False,
    )  # fmt: skip
    cpu = thread_cpu(server.proc.pid)
    res = bench(bcfg)
    split = cpu_split(server.proc.pid, cpu, res["total_output_tokens"])
    time.sleep(0.3)  # the engine thread notices it is idle and logs the period
    found = STEP_LINE.findall(server.log_path.read_text()[seen:])
    period = max(found, key=lambda f: int(f[0]), default=None)
    names = ("mean_step_ms", "tokens_per_step", "busy_pct")
    steps = {k: float(v) for k, v in zip(names, period[1:])} if period else {}
    return {
        "output_throughput": res["output_throughput"], "failed": res["failed"], **steps, **split
    }  # fmt: skip


def offline_bound(cfg: HttpProfileConfig, concurrency: int) -> dict:
    """`offline` on the server engine thread's core with one torch thread, as the server."""
    threads, cpus = torch.get_num_threads(), os.sched_getaffinity(0)
    torch.set_num_threads(1)
    os.sched_setaffinity(0, engine_core())
    try:
        return offline(cfg, concurrency)
    finally:
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(threads)


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def main(cfg: HttpProfileConfig) -> dict:
    """Per variant, one server; per repeat and load, offline then over HTTP (interleaved, so
    a busy machine slows both alike); medians of the HTTP/offline ratio, with every run."""
    from week2_serving.harness.launch import launch

    rows: dict[str, dict[str, list[dict]]] = {}
    for spec in cfg.variants:
        name, flags = spec.split("=", 1)
        extra = ["--dtype", "float32", *flags.split()]
        server = launch("engine", cfg.model, extra=extra, served_name="m", env={STEP_LOG: "1"})
        with server:
            for _ in range(cfg.repeats):
                for c in cfg.loads:
                    base = offline_bound(cfg, c)
                    h = over_http(server, cfg, c)
                    h["http_vs_offline"] = h["output_throughput"] / base["output_throughput"]
                    h["offline"] = base
                    rows.setdefault(f"c{c}", {}).setdefault(name, []).append(h)
                    log.info(
                        "c%d %s: HTTP %.0f tok/s, offline %.0f -> %.2fx; step %s ms (%s tokens, "
                        "busy %s%%) served vs %.2f ms (%.1f tokens) offline; CPU µs/token: "
                        "event loop %.0f, engine thread %.0f", c, name,
                        h["output_throughput"], base["output_throughput"], h["http_vs_offline"],
                        h.get("mean_step_ms"), h.get("tokens_per_step"), h.get("busy_pct"),
                        base["mean_step_ms"], base["tokens_per_step"],
                        h["loop_cpu_us_per_token"], h["engine_cpu_us_per_token"],
                    )  # fmt: skip
    summary = {
        load: {name: median([r["http_vs_offline"] for r in runs]) for name, runs in v.items()}
        for load, v in rows.items()
    }
    log.info("HTTP / offline, medians: %s", summary)
    results = {"config": vars(cfg), "summary": summary, "runs": rows, "environment": environment()}
    save_results("week2", cfg.run_name, results)
    return results


if __name__ == "__main__":
    main(parse(HttpProfileConfig, description=__doc__))
