"""Each speed lever alone, offline: output tokens/s at concurrency 1, 8 and 32.

    python -m week2_serving.engine.levers                    # ~5 min
    python -m week2_serving.engine.levers --repeats 1 --output-len 16    # a quick look

One row per lever (EngineConfig's speed flags, plus torch's thread count), each measured
against "all off" in the same process: the runs go round-robin over the rows, `repeats`
times, so a noisy neighbour slows every row alike; the median and the range are reported.
Concurrency c: 2c requests (4 at c = 1) of random 16-token prompts, `max_num_seqs` = c,
greedy, each with its own output length drawn around `output_len` (± `output_spread`, the same
draws for every row): requests finish at different steps and the next ones join a running
batch, so the decodes of one step sit at many context lengths, as on a server. A row whose
lever cannot run on this machine (the paged op or torch.compile without a C++ compiler) is
left out, and the results say why.

Writes runs/week2/engine-levers/results.json.
"""

from __future__ import annotations

import os
import random
import shutil
import statistics
import time
from dataclasses import dataclass, field

import torch

from common.cli import parse
from common.results import get_logger, runs_root, save_results
from common.timing import environment
from week2_serving.engine import paged_cpu
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.profile import LEVERS_OFF as OFF
from week2_serving.engine.sequence import SamplingParams

log = get_logger("week2.engine.levers")
# row -> (EngineConfig overrides, torch threads or None for the run's --threads)
SDPA = {"paged_kernel": False, "prepacked_linears": False, "fused_norms": False}  # CPU levers off
COMPILE = {"torch_compile": True, "prepacked_linears": False}  # the compiler lays weights out
ROWS = {
    "all off (reference paths)": (OFF, None),
    "(a) fast_prepare: inputs by tensor ops": ({**OFF, "fast_prepare": True}, None),
    "(d) batched_sampling": ({**OFF, "batched_sampling": True}, None),
    "(a) + (d): SDPA groups, plain weights": (SDPA, None),
    "(b') (a) + (d) + all decodes in one attention group": (
        {**SDPA, "one_decode_group": True},
        None,
    ),
    "(c) (a) + (d) + paged attention op (K/V read in place)": (
        {**SDPA, "paged_kernel": True},
        None,
    ),
    "(e) (a) + (d) + prepacked linears (oneDNN)": ({**SDPA, "prepacked_linears": True}, None),
    "(h) (a) + (d) + fused RMSNorm (C++)": ({**SDPA, "fused_norms": True}, None),
    "all on (defaults): (a) + (c) + (d) + (e) + (h)": ({}, None),
    "(g) (a) + (c) + (d) + torch.compile of each block's dense parts": (COMPILE, None),
    "(i) defaults + overlap scheduling (next step planned during the forward)": (
        {"overlap_scheduling": True},
        None,
    ),
}
# which rows are the engine's defaults (kept) and which were measured and left off
KEPT = {
    "all off (reference paths)": "reference",
    "(a) fast_prepare: inputs by tensor ops": "kept (on)",
    "(d) batched_sampling": "kept (on)",
    "(a) + (d): SDPA groups, plain weights": "the path without a compiler or oneDNN",
    "(b') (a) + (d) + all decodes in one attention group": "not kept (off)",
    "(c) (a) + (d) + paged attention op (K/V read in place)": "kept (on where it builds)",
    "(e) (a) + (d) + prepacked linears (oneDNN)": "kept (on with oneDNN)",
    "(h) (a) + (d) + fused RMSNorm (C++)": "kept (on where it builds)",
    "all on (defaults): (a) + (c) + (d) + (e) + (h)": "the defaults",
    "(g) (a) + (c) + (d) + torch.compile of each block's dense parts": "not kept (--torch-compile)",
    "(i) defaults + overlap scheduling (next step planned during the forward)": (
        "ablation (--overlap-scheduling)"
    ),
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
    output_len: int = 64  # greedy tokens per request, on average
    output_spread: float = 0.5  # each request's output length uniform in output_len x (1 ± this)
    input_len: int = 16  # random prompt tokens
    repeats: int = 3  # runs per (row, concurrency); the median is reported
    threads: int = 1  # torch threads (the server's default on 2 cores)
    thread_row: bool = False  # also measure one more torch thread than --threads
    compile_row: bool = True  # measure row (g), torch.compile (compiled at start, ~30 s each)
    dtype: str = "float32"  # the engine's --dtype (float32: as the comparison with vLLM)
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("output_len", "input_len", "repeats", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
                raise ValueError(f"{name}={value!r}: use an integer in 1..4096")
        if not 0 <= self.output_spread < 1:  # NaN fails this too
            raise ValueError(f"output_spread={self.output_spread!r}: use a share in [0, 1)")
        bad = [c for c in self.concurrency if isinstance(c, bool) or not 1 <= c <= 1024]
        if not self.concurrency or bad:
            raise ValueError(f"concurrency={self.concurrency!r}: use integers in 1..1024")


def timed_run(eng: LLMEngine, prompts, lengths: list[int], threads: int) -> float:
    """Output tokens per second of one offline run."""
    torch.set_num_threads(threads)
    params = [SamplingParams(max_tokens=n, ignore_eos=True) for n in lengths]
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


def unavailable(rows: dict) -> dict[str, str]:
    """The rows whose lever cannot run here, and why."""
    out = {}
    for row, (overrides, _) in rows.items():
        op = overrides.get("paged_kernel") is not False or overrides.get("fused_norms")
        if op and (why := paged_cpu.unavailable_reason()):
            out[row] = why
        elif overrides.get("torch_compile") and not shutil.which(os.environ.get("CXX", "c++")):
            out[row] = "no C++ compiler: torch.compile's CPU backend writes C++"
        elif (
            overrides.get("prepacked_linears") is not False
            and not torch.backends.mkldnn.is_available()
        ):
            out[row] = "this PyTorch build has no oneDNN"
    return out


def output_lengths(cfg: LeversConfig, n: int, rng: random.Random) -> list[int]:
    lo = max(1, round(cfg.output_len * (1 - cfg.output_spread)))
    hi = max(lo, round(cfg.output_len * (1 + cfg.output_spread)))
    return [rng.randint(lo, hi) for _ in range(n)]


def measure(cfg: LeversConfig) -> dict:
    rows = {**ROWS, **(THREAD_ROW if cfg.thread_row else {})}
    if not cfg.compile_row:
        rows = {row: v for row, v in rows.items() if not v[0].get("torch_compile")}
    skipped = unavailable(rows)
    for row, why in skipped.items():
        log.info("left out: %s (%s)", row, why)
        del rows[row]
    rng = random.Random(cfg.seed)
    engines, prompts, lengths = {}, {}, {}
    for c in cfg.concurrency:
        n = 4 if c == 1 else 2 * c
        for row, (overrides, _) in rows.items():
            ecfg = EngineConfig(
                model=cfg.model, max_num_seqs=c, num_blocks=1024, dtype=cfg.dtype, **overrides
            )
            engines[row, c] = eng = LLMEngine(ecfg)
        vocab = eng.runner.cfg.vocab_size
        prompts[c] = [[rng.randrange(1, vocab) for _ in range(cfg.input_len)] for _ in range(n)]
        lengths[c] = output_lengths(cfg, n, rng)
    for (_, c), eng in engines.items():  # warm-up: first-call costs out of the timings
        eng.generate(prompts[c][:2], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    runs: dict[tuple[str, int], list[float]] = {key: [] for key in engines}
    for _ in range(cfg.repeats):
        for c in cfg.concurrency:
            for row, (_, threads) in rows.items():
                n_threads = cfg.threads + 1 if threads == "more" else cfg.threads
                run = timed_run(engines[row, c], prompts[c], lengths[c], n_threads)
                runs[row, c].append(run)
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
    results = {
        "config": vars(cfg),
        "levers": table,
        "kept": kept,
        "left_out": skipped,
        "environment": environment(),
    }
    save_results("week2", "engine-levers", results)
    for row, cols in table.items():
        parts = "  ".join(
            f"{c}: {v['tokens_per_s']:.0f} tok/s ({v['vs_all_off']:.2f}x)" for c, v in cols.items()
        )
        log.info("%-40s %s", row, parts)
    return results


if __name__ == "__main__":
    main(parse(LeversConfig, description=__doc__))
