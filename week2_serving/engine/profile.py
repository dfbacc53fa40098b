"""Where a step's time goes, with every speed lever off ("before") and on ("after").

    python -m week2_serving.engine.profile                  # 32 requests x 128 tokens, ~1 min
    python -m week2_serving.engine.profile --num-requests 8 --output-len 16    # a quick look

Runs the engine offline on a fixed workload (the bench's lengths: random 16-token prompts,
128 output tokens, greedy, all 32 requests at once as the bench's c32) twice in one process:
levers off (EngineConfig's speed flags False), then on (the defaults). Each step's phases are
timed with `time.perf_counter` by wrappers set on that engine instance (phases.py: nothing is
timed, nothing costs, when this script does not run):

    schedule | prepare inputs | forward (the rest) | attention (K/V gather) |
    attention (SDPA, or the paged op) | sampling | bookkeeping |
    detokenize (the server's incremental detokenizer, per new token)

The server's own cost (the async bridge: engine thread -> asyncio queues -> one coroutine per
request, which detokenizes) is measured as the difference in wall time per output token between
the same workload through `AsyncEngine` in this process (no sockets) and offline.

Writes runs/week2/engine-profile/results.json and step_breakdown.png.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field

import torch

from common.cli import parse
from common.plots import plt, save
from common.results import get_logger, run_dir, runs_root, save_results
from common.timing import environment
from week2_serving.engine.detokenizer import Detokenizer
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.phases import GATHER, PHASES, REST, PhaseTimer, gather_timed, instrument
from week2_serving.engine.sequence import SamplingParams

log = get_logger("week2.engine.profile")
LEVERS_OFF = {
    "fast_prepare": False,
    "batched_sampling": False,
    "paged_kernel": False,
    "prepacked_linears": False,
    "fused_norms": False,
}
DETOK = "detokenize"


@dataclass
class ProfileConfig:
    """A fixed offline workload, profiled with the speed levers off and on."""

    model: str = field(default_factory=lambda: str(runs_root() / "week1" / "hf-model"))
    num_requests: int = 32  # all submitted at once (the bench's c32)
    input_len: int = 16  # random prompt tokens (the bench's random_input_len)
    output_len: int = 128  # tokens generated per request (ignore_eos)
    max_num_seqs: int = 32
    threads: int = 1  # torch threads (the server's default on a 2-core machine)
    dtype: str = "float32"  # the engine's --dtype (float32: as the comparison with vLLM)
    seed: int = 0
    run_name: str = "engine-profile"  # runs/week2/<run_name>/

    def __post_init__(self) -> None:
        for name in ("num_requests", "input_len", "output_len", "max_num_seqs", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
                raise ValueError(f"{name}={value!r}: use an integer in 1..4096")


def workload(cfg: ProfileConfig, vocab: int) -> list[list[int]]:
    rng = random.Random(cfg.seed)
    return [
        [rng.randrange(1, vocab) for _ in range(cfg.input_len)] for _ in range(cfg.num_requests)
    ]


def build(cfg: ProfileConfig, **levers) -> LLMEngine:
    ecfg = EngineConfig(
        model=cfg.model,
        max_num_seqs=cfg.max_num_seqs,
        num_blocks=4096,
        device="cpu",
        dtype=cfg.dtype,
        **levers,
    )
    return LLMEngine(ecfg)


def run_offline(eng: LLMEngine, prompts, cfg: ProfileConfig, timer: PhaseTimer | None):
    """Every prompt to the end, stepping by hand (detokenizing each new token, as the server
    does); returns (wall seconds, steps, output tokens)."""
    params = SamplingParams(max_tokens=cfg.output_len, ignore_eos=True)
    detoks = {eng.add_request(p, params).request_id: Detokenizer(eng.tokenizer) for p in prompts}
    steps = tokens = 0
    start = time.perf_counter()
    while eng.has_unfinished():
        outs = eng.step()
        steps += 1
        tokens += sum(len(o.new_token_ids) for o in outs)
        if timer is None:
            for o in outs:
                detoks[o.request_id].add(o.new_token_ids)
            continue
        with timer.phase(DETOK):
            for o in outs:
                detoks[o.request_id].add(o.new_token_ids)
    return time.perf_counter() - start, steps, tokens


def profile_one(cfg: ProfileConfig, prompts, **levers) -> dict:
    """Warm up, then one timed run of the workload: seconds per phase per output token."""
    eng = build(cfg, **levers)
    run_offline(eng, prompts[:2], cfg, None)  # first-call costs out of the way
    timer = PhaseTimer(eng.runner.device)
    instrument(eng, timer)
    with gather_timed(timer):
        wall, steps, tokens = run_offline(eng, prompts, cfg, timer)
    order = [p[0] for p in PHASES] + [GATHER, REST, DETOK]
    return {
        "wall_s": wall,
        "steps": steps,
        "output_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "us_per_token": {k: 1e6 * timer.seconds.get(k, 0.0) / tokens for k in order},
        "us_per_token_untimed": 1e6 * (wall - sum(timer.seconds.values())) / tokens,
    }


async def _serve(eng: LLMEngine, prompts, cfg: ProfileConfig) -> int:
    from week2_serving.engine.async_engine import AsyncEngine

    bridge = AsyncEngine(eng)
    bridge.start()
    params = SamplingParams(max_tokens=cfg.output_len, ignore_eos=True)

    async def one(p) -> int:
        detok, q, n = Detokenizer(eng.tokenizer), bridge.submit(eng.make_sequence(p, params)), 0
        while True:
            o = await q.get()
            detok.add(o.new_token_ids)
            n += len(o.new_token_ids)
            if o.finished:
                return n

    try:
        return sum(await asyncio.gather(*(one(p) for p in prompts)))
    finally:
        bridge.shutdown()


def bridge_overhead(cfg: ProfileConfig, prompts) -> dict:
    """Wall time per output token through AsyncEngine (engine thread + asyncio) vs offline."""
    eng = build(cfg)
    run_offline(eng, prompts[:2], cfg, None)
    offline, _, tokens = run_offline(eng, prompts, cfg, None)
    start = time.perf_counter()
    served = asyncio.run(_serve(eng, prompts, cfg))
    online = time.perf_counter() - start
    return {
        "offline_us_per_token": 1e6 * offline / tokens,
        "async_us_per_token": 1e6 * online / served,
        "overhead_us_per_token": 1e6 * (online / served - offline / tokens),
    }


def plot(before: dict, after: dict, path) -> None:
    fig, ax = plt.subplots(figsize=(7, 5))
    bottoms = [0.0, 0.0]
    for phase in before["us_per_token"]:
        ys = [before["us_per_token"][phase], after["us_per_token"][phase]]
        ax.bar(["before (levers off)", "after (levers on)"], ys, bottom=bottoms, label=phase)
        bottoms = [b + y for b, y in zip(bottoms, ys)]
    ax.set_ylabel("µs per output token")
    ax.set_title("One engine step, phase by phase (offline, same workload)")
    ax.legend(fontsize=7, loc="upper right")
    save(fig, path)


def main(cfg: ProfileConfig) -> dict:
    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return measure(cfg)
    finally:
        torch.set_num_threads(threads_before)


def measure(cfg: ProfileConfig) -> dict:
    probe = build(cfg)
    prompts = workload(cfg, probe.runner.cfg.vocab_size)
    del probe
    before = profile_one(cfg, prompts, **LEVERS_OFF)
    after = profile_one(cfg, prompts)
    results = {
        "config": vars(cfg),
        "levers_off": LEVERS_OFF,
        "before": before,
        "after": after,
        "speedup": after["tokens_per_s"] / before["tokens_per_s"],
        "async_bridge": bridge_overhead(cfg, prompts),
        "environment": environment(),
    }
    save_results("week2", cfg.run_name, results)
    plot(before, after, run_dir("week2", cfg.run_name) / "step_breakdown.png")
    for name, r in (("before", before), ("after", after)):
        parts = ", ".join(f"{k} {v:.0f}" for k, v in r["us_per_token"].items())
        log.info("%s: %.0f tok/s; µs per token: %s", name, r["tokens_per_s"], parts)
    log.info(
        "after/before %.2fx; async bridge adds %.0f µs per token",
        results["speedup"],
        results["async_bridge"]["overhead_us_per_token"],
    )
    return results


if __name__ == "__main__":
    main(parse(ProfileConfig, description=__doc__))
