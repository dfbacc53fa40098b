"""Trace replay: requests sent at recorded times with recorded lengths, and a trace generator.

    python -m week2_serving.harness.traces --out runs/week2/trace.csv --num-requests 200 \
        --rate 2 --burstiness 0.3                        # write a synthetic BurstGPT-style trace
    python -m week2_serving.harness.bench --dataset-name trace \
        --dataset-path week2_serving/harness/data/trace-synthetic.csv --trace-speedup 2

A trace is a CSV file with a header and one request a row, in either spelling:
- BurstGPT's: `Timestamp, Model, Request tokens, Response tokens, Total tokens, Log Type`
  (seconds, then token counts; rows with 0 response tokens, failed requests there, are skipped);
- the short one: `timestamp, input_len, output_len`.
Each row becomes a prompt of random token ids of its input length, sent `(timestamp − first
timestamp) / speedup` seconds after the run starts, asking for its output length. The arrival
process of `--request-rate` is not used: the trace is the arrival process.

The generator draws gamma gaps (mean 1/rate, shape = burstiness: < 1 is burstier than
Poisson) and log-normal lengths around the given means: a small stand-in for a production
trace with its bursts and long tails, reproducible from its seed.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import parse
from week2_serving.harness.client import Request
from week2_serving.harness.synth import random_ids, vocabulary

COLUMNS = {  # what we read -> the header names that carry it, BurstGPT's first
    "timestamp": ("Timestamp", "timestamp"),
    "input_len": ("Request tokens", "input_len"),
    "output_len": ("Response tokens", "output_len"),
}
BURSTGPT_HEADER = ["Timestamp", "Model", "Request tokens", "Response tokens", "Total tokens"]
BURSTGPT_HEADER += ["Log Type"]


@dataclass
class TimedRequest(Request):
    """A request sent `arrival_s` seconds after the run started (trace replay)."""

    arrival_s: float = 0.0


def read_trace(path: Path | str) -> list[tuple[float, int, int]]:
    """(timestamp, input tokens, output tokens) per usable row, in file order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trace file {path} does not exist")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        cols = {k: next((n for n in names if n in header), None) for k, names in COLUMNS.items()}
        missing = [k for k, v in cols.items() if v is None]
        if missing:
            raise ValueError(
                f"{path}: the header {header} lacks {missing}; use BurstGPT's columns "
                "(Timestamp, Request tokens, Response tokens) or timestamp,input_len,output_len"
            )
        rows = []
        for n, row in enumerate(reader, 2):
            try:
                ts, i, o = (float(row[cols[k]]) for k in COLUMNS)
            except (TypeError, ValueError):
                raise ValueError(f"{path}:{n}: not numbers: {row}") from None
            if i >= 1 and o >= 1:
                rows.append((ts, int(i), int(o)))
    if not rows:
        raise ValueError(f"{path} has no row with input and output tokens >= 1")
    return rows


def trace_requests(
    path: Path | str,
    tokenizer,
    num: int | None = None,
    speedup: float = 1.0,
    seed: int = 0,
    ignore_eos: bool = True,
) -> list[TimedRequest]:
    """The trace's first `num` rows (all when None) as TimedRequests, in time order."""
    if not speedup > 0:
        raise ValueError(f"trace speedup={speedup} must be > 0")
    rows = sorted(read_trace(path), key=lambda r: r[0])[:num]
    rng = np.random.default_rng(seed)
    vocab = vocabulary(tokenizer)
    t0 = rows[0][0]
    return [
        TimedRequest(
            prompt=random_ids(rng, vocab, i),
            prompt_len=i,
            output_len=o,
            ignore_eos=ignore_eos,
            arrival_s=(ts - t0) / speedup,
        )
        for ts, i, o in rows
    ]


@dataclass
class TraceConfig:
    """Write a synthetic BurstGPT-style trace: bursty arrivals, long-tailed lengths."""

    out: Path = Path("runs/week2/trace-synthetic.csv")  # the CSV file to write
    num_requests: int = 100  # rows
    rate: float = 2.0  # mean requests per second
    burstiness: float = 0.3  # gamma shape of the gaps: 1 = Poisson, < 1 burstier
    input_len: int = 64  # mean prompt tokens (log-normal)
    output_len: int = 64  # mean response tokens (log-normal)
    sigma: float = 0.6  # log-normal spread of the lengths
    max_len: int = 256  # no length above this
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_requests", "input_len", "output_len", "max_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("rate", "burstiness"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be > 0")


def synthetic_trace(cfg: TraceConfig) -> list[tuple[float, int, int]]:
    """(timestamp, input tokens, output tokens) rows drawn from `cfg`."""
    rng = np.random.default_rng(cfg.seed)
    gaps = rng.gamma(cfg.burstiness, 1.0 / (cfg.rate * cfg.burstiness), cfg.num_requests)
    times = np.cumsum(gaps) - gaps[0]

    def draw(mean: int) -> np.ndarray:  # log-normal with this mean
        mu = np.log(mean) - cfg.sigma**2 / 2
        return np.clip(np.rint(rng.lognormal(mu, cfg.sigma, cfg.num_requests)), 1, cfg.max_len)

    ins, outs = draw(cfg.input_len), draw(cfg.output_len)
    return [(round(float(t), 3), int(i), int(o)) for t, i, o in zip(times, ins, outs)]


def write_trace(rows: list[tuple[float, int, int]], path: Path | str, model: str = "synthetic"):
    """Write `rows` as a BurstGPT-style CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(BURSTGPT_HEADER)
        for ts, i, o in rows:
            w.writerow([ts, model, i, o, i + o, "Conversation log"])
    return path


def main(cfg: TraceConfig) -> Path:
    path = write_trace(synthetic_trace(cfg), cfg.out)
    print(f"wrote {cfg.num_requests} requests to {path}")
    return path


if __name__ == "__main__":
    main(parse(TraceConfig, description=__doc__))
