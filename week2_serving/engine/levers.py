"""Each speed lever alone, offline: output tokens/s at concurrency 1, 8 and 32.

    python -m week2_serving.engine.levers                    # ~2 min
    python -m week2_serving.engine.levers --repeats 1 --output-len 16    # a quick look

One row per lever (EngineConfig's speed flags, plus torch's thread count), each measured
against "all off" in the same process: the runs go round-robin over the rows, `repeats`
times, so a noisy neighbour slows every row alike; the median and the range are reported.
Concurrency c: 2c requests (4 at c = 1) of random 16-token prompts, `max_num_seqs` = c,
`output_len` greedy tokens each.

Writes runs/week2/engine-levers/results.json.
"""

from __future__ import annotations

import random
import statistics
import time
from dataclasses import dataclass, field

import torch

from common.cli import parse
from common.results import get_logger, runs_root, save_results
from common.timing import environment
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.profile import LEVERS_OFF as OFF
from week2_serving.engine.sequence import SamplingParams

log = get_logger("week2.engine.levers")
# row -> (EngineConfig overrides, torch threads or None for the run's --threads)
ROWS = {
    "all off (reference paths)": (OFF, None),
    "(a) fast_prepare: inputs by tensor ops": ({**OFF, "fast_prepare": True}, None),
    "(d) batched_sampling": ({**OFF, "batched_sampling": True}, None),
    "all on (defaults)": ({}, None),
    "(b') defaults + all decodes in one attention group": ({"one_decode_group": True}, None),
}
# which rows are the engine's defaults (kept) and which were measured and left off
KEPT = {
    "all off (reference paths)": "reference",
    "(a) fast_prepare: inputs by tensor ops": "kept (on)",
    "(d) batched_sampling": "kept (on)",
    "all on (defaults)": "the defaults",
    "(b') defaults + all decodes in one attention group": "not kept (off)",
    "(f) all on + one more torch thread": "not kept (--threads)",
}
# opt-in (--thread-row): on a machine whose cores are busy, a second torch thread spin-waits
# for a core and the row can take many times longer than all the others together
THREAD_ROW = {"(f) all on + one more torch thread": ({}, "more")}


@dataclass
class LeversConfig:
    """Offline tokens/s per lever at a few concurrencies."""

    model: str = field(default_factory=lambda: str(runs_root() / "week1" / "hf-model"))
    concurrency: tuple[int, ...] = (1, 8, 32)  # max_num_seqs of each column
    output_len: int = 64  # greedy tokens per request
    input_len: int = 16  # random prompt tokens
    repeats: int = 3  # runs per (row, concurrency); the median is reported
    threads: int = 1  # torch threads (the server's default on 2 cores)
    thread_row: bool = False  # also measure one more torch thread than --threads
    dtype: str = "float32"  # the engine's --dtype (float32: as the comparison with vLLM)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("output_len", "input_len", "repeats", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
                raise ValueError(f"{name}={value!r}: use an integer in 1..4096")
        bad = [c for c in self.concurrency if isinstance(c, bool) or not 1 <= c <= 1024]
        if not self.concurrency or bad:
            raise ValueError(f"concurrency={self.concurrency!r}: use integers in 1..1024")


def timed_run(eng: LLMEngine, prompts, cfg: LeversConfig, threads: int) -> float:
    """Output tokens per second of one offline run."""
    torch.set_num_threads(threads)
    params = SamplingParams(max_tokens=cfg.output_len, ignore_eos=True)
    start = time.perf_counter()
    outs = eng.generate(prompts, params, use_tqdm=False)
    dt = time.perf_counter() - start
    return sum(len(o.token_ids) for o in outs) / dt


def main(cfg: LeversConfig) -> dict:
    threads_before = torch.get_num_threads()
    try:
        return measure(cfg)
    finally:
        torch.set_num_threads(threads_before)


def measure(cfg: LeversConfig) -> dict:
    rows = {**ROWS, **(THREAD_ROW if cfg.thread_row else {})}
    rng = random.Random(cfg.seed)
    engines, prompts = {}, {}
    for c in cfg.concurrency:
        n = 4 if c == 1 else 2 * c
        for row, (overrides, _) in rows.items():
            ecfg = EngineConfig(
                model=cfg.model, max_num_seqs=c, num_blocks=1024, dtype=cfg.dtype, **overrides
            )
            engines[row, c] = eng = LLMEngine(ecfg)
        vocab = eng.runner.cfg.vocab_size
        prompts[c] = [[rng.randrange(1, vocab) for _ in range(cfg.input_len)] for _ in range(n)]
    for (_, c), eng in engines.items():  # warm-up: first-call costs out of the timings
        eng.generate(prompts[c][:2], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    runs: dict[tuple[str, int], list[float]] = {key: [] for key in engines}
    for _ in range(cfg.repeats):
        for c in cfg.concurrency:
            for row, (_, threads) in rows.items():
                n_threads = cfg.threads + 1 if threads == "more" else cfg.threads
                runs[row, c].append(timed_run(engines[row, c], prompts[c], cfg, n_threads))
    table = {}
    for row in rows:
        table[row] = {}
        for c in cfg.concurrency:
            med = statistics.median(runs[row, c])
            ref = statistics.median(runs[next(iter(rows)), c])
            table[row][f"c{c}"] = {
                "tokens_per_s": med,
                "range": [min(runs[row, c]), max(runs[row, c])],
                "vs_all_off": med / ref,
            }
    kept = {row: KEPT.get(row, "") for row in rows}
    results = {"config": vars(cfg), "levers": table, "kept": kept, "environment": environment()}
    save_results("week2", "engine-levers", results)
    for row, cols in table.items():
        parts = "  ".join(
            f"{c}: {v['tokens_per_s']:.0f} tok/s ({v['vs_all_off']:.2f}x)" for c, v in cols.items()
        )
        log.info("%-40s %s", row, parts)
    return results


if __name__ == "__main__":
    main(parse(LeversConfig, description=__doc__))
