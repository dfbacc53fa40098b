"""Open-loop rate sweeps: latency percentiles at each request rate, and the latency-vs-rate plot.

    python -m week2_serving.harness.rates --base-url http://127.0.0.1:8000 --request-rates 1 2 4
    python -m week2_serving.harness.rates --base-url URL --profile sweep --num-rates 5 --num-runs 3

`--request-rates` measures the rates given. `--profile sweep` does as guidellm's sweep: it
measures the synchronous rate (one request at a time) and the saturated rate (every request at
once, the most the server completes per second), then `--num-rates` constant rates evenly
spaced strictly between them. Each rate is an open-loop run (arrivals do not wait for
answers, no concurrency cap), `--num-runs` times: every cell of the table is the median, with
min–max in brackets. Every other flag is the bench's (workload, lengths, warm-ups...).
Writes runs/week2/<run-name>/results.json and latency_vs_rate.png.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from common.cli import config_from_args
from common.plots import plt, save
from common.report import md_table
from common.results import get_logger, run_dir, save_results
from week2_serving.harness import bench
from week2_serving.harness.bench_config import BenchConfig, bench_parser
from week2_serving.harness.repeats import with_range

log = get_logger("week2.rates")
METRICS = ("ttft", "tpot", "itl", "e2el")


def sweep_rates(sync_rate: float, saturated_rate: float, num: int) -> list[float]:
    """`num` constant rates evenly spaced strictly between the two measured ends."""
    if not 0 < sync_rate < saturated_rate:
        raise ValueError(
            f"the synchronous rate {sync_rate:.3g} req/s is not below the saturated rate "
            f"{saturated_rate:.3g}: the server does not batch; give --request-rates instead"
        )
    return [float(r) for r in np.linspace(sync_rate, saturated_rate, num + 2)[1:-1]]


def measure_rate(base: BenchConfig, rate: float) -> dict:
    """One open-loop point: `base`'s workload at `rate` req/s, no concurrency cap."""
    res = bench.main(replace(base, request_rate=rate, max_concurrency=None, save=False))
    res.pop("requests", None)
    return res


def ends(base: BenchConfig) -> tuple[dict, dict]:
    """(synchronous, saturated) runs: concurrency 1, then everything at once."""
    sync = bench.main(replace(base, max_concurrency=1, request_rate=math.inf, save=False))
    sat = bench.main(replace(base, max_concurrency=None, request_rate=math.inf, save=False))
    for r in (sync, sat):
        r.pop("requests", None)
    return sync, sat


def run_sweep(base: BenchConfig, rates: list[float] | None, num_rates: int = 5) -> dict:
    """Measure `rates` (or the sweep profile's) and return every point, slowest first."""
    out: dict = {"profile": "rates" if rates else "sweep"}
    if not rates:
        sync, sat = ends(base)
        out.update(synchronous=sync, saturated=sat)
        rates = sweep_rates(sync["request_throughput"], sat["request_throughput"], num_rates)
    out["points"] = [measure_rate(base, r) for r in sorted(rates)]
    return out


def table(points: list[dict]) -> str:
    """Rate, achieved throughput and p50/p99 of each latency, as `median [min–max]`."""
    head = ["rate req/s", "done req/s", "output tok/s"]
    head += [f"{m.upper()} p50 / p99 ms" for m in METRICS]
    rows = []
    for p in points:
        row = [f"{p['config']['request_rate']:.3g}", with_range(p, "request_throughput", "{:.2f}")]
        row.append(with_range(p, "output_throughput", "{:.0f}"))
        for m in METRICS:
            row.append(f"{with_range(p, f'median_{m}_ms')} / {with_range(p, f'p99_{m}_ms')}")
        rows.append(row)
    return md_table(head, rows)


def plot(points: list[dict], path) -> object:
    """p50 and p99 of TTFT, TPOT, ITL, E2EL against the offered rate (log latency)."""
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8))
    xs = [p["config"]["request_rate"] for p in points]
    for ax, m in zip(axes, METRICS):
        for stat, style in (("median", "-o"), ("p99", "--x")):
            key = f"{stat}_{m}_ms"
            ax.plot(xs, [p[key] for p in points], style, label=stat)
            lo = [p.get("spread", {}).get(key, {}).get("min", p[key]) for p in points]
            hi = [p.get("spread", {}).get(key, {}).get("max", p[key]) for p in points]
            ax.fill_between(xs, lo, hi, alpha=0.2)
        ax.set_title(m.upper())
        ax.set_xlabel("offered rate (req/s)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ms (median of runs; band: min–max)")
    axes[0].legend()
    return save(fig, path)


def main(base: BenchConfig, rates: list[float] | None, num_rates: int = 5) -> dict:
    res = run_sweep(base, rates, num_rates)
    res["table"] = table(res["points"])
    name = f"rates-{base.run_name}"
    out = run_dir("week2", name)
    plot(res["points"], out / "latency_vs_rate.png")
    save_results("week2", name, res)
    print(res["table"])
    return res


def parse_args(argv: list[str] | None = None) -> tuple[BenchConfig, list[float] | None, int]:
    p = bench_parser(__doc__)
    p.add_argument("--request-rates", type=float, nargs="+", help="rates to measure (req/s)")
    p.add_argument("--profile", choices=["rates", "sweep"], default="rates")
    p.add_argument("--num-rates", type=int, default=5, help="rates between the ends (sweep)")
    a = p.parse_args(argv)
    # the bench's parser leaves unset flags out of the namespace: read ours with defaults
    rates = vars(a).pop("request_rates", None)
    profile = vars(a).pop("profile", "rates")
    num = vars(a).pop("num_rates", 5)
    if profile == "rates" and not rates:
        p.error("give --request-rates R [R ...] or --profile sweep")
    if "goodput" in a:
        a.goodput = dict(a.goodput)
    try:
        cfg = config_from_args(BenchConfig, a)
    except (TypeError, ValueError) as e:
        p.error(str(e))
        raise
    return cfg, (None if profile == "sweep" else rates), num


if __name__ == "__main__":
    main(*parse_args())
