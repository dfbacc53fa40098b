"""Capacity under an SLO: the highest request rate a server sustains while meeting it.

    python -m week2_serving.harness.capacity                       # vLLM CPU, week 1 model (small)
    python -m week2_serving.harness.capacity --searches 3 --verify-runs 3   # the acceptance check
    python -m week2_serving.harness.capacity --engine engine --name engine
    python -m week2_serving.harness.capacity --name no-pc -- --no-enable-prefix-caching  # server flags
    python -m week2_serving.harness.capacity --base-url http://127.0.0.1:8000 --tokenizer DIR ...

Method: (1) the synchronous rate (one request at a time: completed per second) and the
saturated rate (everything at once: the most the server completes per second) bracket each
search, measured anew for each; (2) capacity_search.py locates the SLO boundary from the *SLO ratio* of each probe
(the worst term's value at its share over its bound), fitted monotone over every probe and
interpolated, not from met / missed verdicts; the capacity is that boundary less `--headroom`;
(3) `--searches` repeats the search (its spread is the reproducibility; the searches take
turns probe by probe, `--no-interleave` runs them one after the other); (4) a separate check
runs `--verify-runs` times at the capacity and at `--verify-factor` x it, the two taking turns,
each side's requests pooled: the first should meet the SLO, the second miss it. The cost per 1M tokens at
capacity prices the machine-hour at `--usd-per-hour`.

Noise kept out: every probe of every search sends the same prompts on the same arrival
times scaled to its rate (one arrival seed; `--new-arrivals` draws a new one per search, which
adds the workload's own sampling noise to the spread), one warm-up request before each probe,
and the prefix cache reset before every run (vLLM is started with VLLM_SERVER_DEV_MODE=1).
A p99 over n requests is decided by its slowest ceil(n/100) requests: `--num-prompts` and
`--probe-runs` (runs pooled per probe) set how many. Writes
runs/week2/capacity-<name>/results.json, capacity.png and report.md.

A capacity belongs to its run length: `--num-prompts` requests offered at any rate are at
worst one burst of that many, so if the saturated run (everything at once) meets the SLO no
rate can miss it, and the search ends saying so. A short run also hides an overload: a rate
the server cannot sustain only fills its batch for a while, and the queue (TTFT in the
seconds) shows once arrivals have outrun completions for long enough. `--duration S` sizes
every open-loop run by time instead, rate x S requests: the acceptance check uses it, so that
the check at 1.25x the capacity meets a queue. The default lengths and run size miss it on the
week 1 model on 2 CPU cores.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from common.cli import build_parser, config_from_args
from common.procs import sigterm_as_interrupt
from common.results import get_logger, run_dir, runs_root, save_results
from week2_serving.harness import bench
from week2_serving.harness.capacity_page import plot_search, write_page
from week2_serving.harness.capacity_search import interleave, search_steps, slo_ratio
from week2_serving.harness.launch import (
    ENGINES,
    core_layout,
    launch,
    lower_client_priority,
    worker_core_apart,
)
from week2_serving.harness.repeats import combine_runs
from week2_serving.harness.slo import Probe, attainment, parse_term

log = get_logger("week2.capacity")
MIN_PROMPTS = 16  # the fewest requests a --duration run sends (a p99 of fewer is one request)
METHOD = (
    "the SLO ratio (worst term's value at its share / its bound) of open-loop probes between "
    "the synchronous and the saturated rate, fitted monotone in the rate and interpolated to "
    "ratio 1 (the boundary); capacity = boundary less the headroom; same arrivals every probe"
)


@dataclass
class CapacityConfig:
    """Find the highest request rate that meets an SLO, check it, and price it."""

    slo: list[str] = field(default_factory=lambda: ["ttft_p99:500", "tpot_p99:50"])  # terms
    name: str = "default"  # results go to runs/week2/capacity-<name>
    base_url: str | None = None  # a running server (none: start `engine` serving `model`)
    engine: str = "vllm"  # vllm | sglang | engine, when the server is started here
    model: str | None = None  # HF folder or hub id (none: runs/week1/hf-model)
    tokenizer: str | None = None  # for --base-url: the model's folder (none: the server says)
    input_len: int = 256  # mean prompt tokens (random workload)
    output_len: int = 128  # mean output tokens
    range_ratio: float = 0.5  # lengths uniform in [len*(1-r), len*(1+r)]
    num_prompts: int = 48  # requests per measured run (and in the saturated bracket run)
    # seconds of arrivals per open-loop run (0: every run sends --num-prompts): a run at r
    # req/s then sends round(r x duration) requests (at least MIN_PROMPTS), so an overload has
    # as long to build a queue at any rate, and a slow rate costs no more time than a fast one
    duration: float = 0.0
    probe_runs: int = 1  # runs per probed rate (their requests pooled)
    tolerance: float = 0.05  # stop when the bracket's width is under this share of its bottom
    max_probes: int = 6  # measured rates per search, at most (the two ends included)
    # the capacity reported: the fitted boundary less this share. A shared 2-core machine's
    # speed moves by a few percent from one search to the next; a tenth keeps the check at the
    # capacity on the meeting side of that noise
    headroom: float = 0.10
    searches: int = 1  # repeated searches: the capacity's spread
    # each search with its own arrival seed (adds the workload's sampling noise to the spread);
    # off: the same arrival times every search (the measurement's noise only)
    new_arrivals: bool = False
    # searches take turns probe by probe (s1, s2, s3, s1, ...), so that the machine's drift
    # over minutes weighs on all alike; off: one search after the other
    interleave: bool = True
    verify_runs: int = 1  # runs at the capacity and at verify_factor x it (0: no check)
    verify_factor: float = 1.25
    usd_per_hour: float = 2.0  # price of one machine-hour, for $ per 1M tokens
    # a vLLM server started here: its model worker on every core but the last, its other
    # processes and the load client on the last (launch.worker_core_apart), the client at this
    # niceness; --no-pin-cores leaves placement to the OS scheduler
    pin_cores: bool = True
    client_nice: int = 10
    seed: int = 0
    server_args: list[str] = field(default_factory=list, metadata={"cli": False})  # after --

    def __post_init__(self) -> None:
        for t in self.slo:
            parse_term(t)  # raises with the term and the syntax
        if not self.slo:
            raise ValueError("give at least one SLO term, e.g. --slo ttft_p99:500")
        if self.engine not in ENGINES:
            raise ValueError(f"engine={self.engine!r}: use one of {', '.join(ENGINES)}")
        for k in ("input_len", "output_len", "num_prompts", "probe_runs", "max_probes"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}={getattr(self, k)} must be >= 1")
        if type(self.client_nice) is not int or not 0 <= self.client_nice <= 19:
            raise ValueError(f"client_nice={self.client_nice!r} must be an integer in 0..19")
        if not (math.isfinite(self.duration) and 0 <= self.duration <= 3600):
            raise ValueError(f"duration={self.duration!r}: use seconds in [0, 3600] (0: off)")
        if self.searches < 1 or self.verify_runs < 0 or not self.verify_factor > 1:
            raise ValueError("searches >= 1, verify_runs >= 0 and verify_factor > 1, please")
        if not 0 < self.tolerance < 1 or not 0 <= self.headroom < 1 or self.max_probes < 2:
            raise ValueError("tolerance in (0, 1), headroom in [0, 1) and max_probes >= 2")


def base_bench(cfg: CapacityConfig, url: str, tokenizer: str | None) -> bench.BenchConfig:
    """The workload every run of the study sends (open loop: no concurrency cap)."""
    return bench.BenchConfig(
        base_url=url,
        model="capacity" if cfg.base_url is None else None,
        tokenizer=tokenizer,
        num_prompts=cfg.num_prompts,
        random_input_len=cfg.input_len,
        random_output_len=cfg.output_len,
        random_range_ratio=cfg.range_ratio,
        seed=cfg.seed,
        save=False,
    )


def summary_of(res: dict, terms) -> dict:
    """What a probe keeps: attainment (pooled over its runs) and the headline metrics."""
    att = attainment(res["requests"], terms)
    keep = ("request_throughput", "output_throughput", "total_token_throughput")
    keep += ("p50_ttft_ms", "p99_ttft_ms", "p50_tpot_ms", "p99_tpot_ms", "mean_tpot_ms")
    keep += ("mean_tpot_token_weighted_ms", "p99_tpot_token_weighted_ms", "p99_e2el_ms")
    out = {k: res.get(k) for k in keep}
    out.update(att, goodput=att["good_share"] * res["request_throughput"])
    out["slo_ratio"] = slo_ratio(res["requests"], terms)
    if res.get("num_runs", 1) > 1:
        out["runs_meet"] = [attainment(r, terms)["meets"] for r in runs_requests(res)]
        # the run-to-run spread of the ratio at one rate: the measurement's own noise
        out["runs_ratio"] = [slo_ratio(r, terms) for r in runs_requests(res)]
    return out


def runs_requests(res: dict) -> list[list[dict]]:
    """The request records of each run of a combined results document."""
    by: dict[int, list[dict]] = {}
    for q in res["requests"]:
        by.setdefault(q.get("run", 0), []).append(q)
    return [by[k] for k in sorted(by)]


def prompts_at(cfg: CapacityConfig, rate: float) -> int:
    """Requests in one open-loop run at `rate`: --num-prompts, or rate x --duration."""
    if not cfg.duration:
        return cfg.num_prompts
    return max(MIN_PROMPTS, round(rate * cfg.duration))


def open_loop(cfg: CapacityConfig, base: bench.BenchConfig, rate: float, runs: int, seed: int):
    """One bench call: `runs` runs at `rate` (one warm-up request first), combined."""
    n = prompts_at(cfg, rate)
    return bench.main(
        replace(base, num_prompts=n, request_rate=rate, num_runs=runs, seed=seed, num_warmups=1)
    )


def probe_of(res: dict, terms, rate: float) -> Probe:
    s = summary_of(res, terms)
    log.info("%.3g req/s: %s %s", rate, "meets" if s["meets"] else "misses", s["shares"])
    return Probe(rate, s["meets"], s)


def measure(
    cfg: CapacityConfig, base: bench.BenchConfig, terms, rate: float, runs: int, seed: int
) -> Probe:
    return probe_of(open_loop(cfg, base, rate, runs, seed), terms, rate)


def bracket(base: bench.BenchConfig) -> dict:
    """The synchronous rate (one at a time) and the saturated rate (all at once)."""
    sync = bench.main(replace(base, max_concurrency=1, num_prompts=min(base.num_prompts, 16)))
    sat = bench.main(base)
    return {"sync_rate": sync["request_throughput"], "saturated_rate": sat["request_throughput"]}


def search_all(cfg: CapacityConfig, base: bench.BenchConfig, terms) -> list:
    """`cfg.searches` searches, each from its own bracket measurement (so the spread holds
    the ends' noise too), on one arrival seed (or one each with `new_arrivals`). With
    `interleave` the searches take turns probe by probe (brackets first, one after another):
    the speed of a small shared machine drifts over minutes, and three searches run one after
    the other would measure three machines."""
    edges, steps = [], []
    for s in range(cfg.searches):
        edges.append(bracket(base))
        seed = cfg.seed + 1 + (s if cfg.new_arrivals else 0)

        def probe(rate: float, seed: int = seed) -> Probe:
            return measure(cfg, base, terms, rate, cfg.probe_runs, seed)

        gen = search_steps(
            edges[s]["sync_rate"],
            edges[s]["saturated_rate"],
            cfg.tolerance,
            cfg.max_probes,
            cfg.headroom,
        )
        steps.append((gen, probe))
    one_by_one = [[one] for one in steps]  # --no-interleave: one search after the other
    found_all = interleave(steps) if cfg.interleave else [interleave(o)[0] for o in one_by_one]
    out = []
    for s, found in enumerate(found_all):
        found["probes"] = [asdict(p) for p in found["probes"]]
        found["ends"] = edges[s]
        log.info("search %d: capacity %s (%s)", s + 1, found["capacity"], found["why"])
        out.append(found)
    return out


def verify(cfg: CapacityConfig, base: bench.BenchConfig, terms, rate: float) -> dict:
    """`verify_runs` runs at `rate` and at verify_factor × rate (new seeds), taking turns
    (at, above, at, above, ...) so that a drift of the machine's speed weighs on both alike;
    each side's runs are pooled."""
    rates = {"at": rate, "above": rate * cfg.verify_factor}
    seeds = {"at": cfg.seed + 100, "above": cfg.seed + 101}
    runs: dict[str, list[dict]] = {"at": [], "above": []}
    for _ in range(cfg.verify_runs):
        for side, r in rates.items():
            runs[side].append(open_loop(cfg, base, r, 1, seeds[side]))
    out = {side: asdict(probe_of(combine_runs(runs[side]), terms, rates[side])) for side in runs}
    return {**out, "factor": cfg.verify_factor}


def cost_per_million(usd_per_hour: float, tokens_per_s: float | None) -> float | None:
    """$ per 1M tokens when the machine produces `tokens_per_s` for `usd_per_hour`."""
    return usd_per_hour / (tokens_per_s * 3600) * 1e6 if tokens_per_s else None


def conclude(cfg: CapacityConfig, searches: list, check: dict | None) -> dict:
    """The capacity (median over searches), its spread, and the cost per 1M tokens there."""
    found = [s["capacity"] for s in searches if s["capacity"] is not None]
    if not found:
        return {"capacity": None, "why": searches[0]["why"]}
    cap = statistics.median(found)
    at = (check or {}).get("at", {}).get("summary") or {}
    out_tps, all_tps = at.get("output_throughput"), at.get("total_token_throughput")
    return {
        "capacity": cap,
        "capacities": found,
        "spread_of_median": (max(found) - min(found)) / cap if cap else None,
        "boundaries": [s.get("boundary") for s in searches],
        "usd_per_1m_output_tokens": cost_per_million(cfg.usd_per_hour, out_tps),
        "usd_per_1m_total_tokens": cost_per_million(cfg.usd_per_hour, all_tps),
        "verified": bool(check and check["at"]["meets"] and not check["above"]["meets"]),
    }


def model_of(cfg: CapacityConfig) -> str:
    return cfg.model or str(runs_root() / "week1" / "hf-model")


def served(cfg: CapacityConfig, out: Path, env: dict | None = None):
    """The server to measure: the one at --base-url, or one started here (prefix-cache resets
    allowed: vLLM serves /reset_prefix_cache only in its dev mode)."""
    if cfg.base_url:
        return contextlib.nullcontext(None)
    model = model_of(cfg)
    env = {**(env or {}), "VLLM_SERVER_DEV_MODE": "1"} if cfg.engine == "vllm" else {}
    return launch(
        cfg.engine, model, extra=cfg.server_args, log_dir=out, served_name="capacity", env=env
    )


def placement(cfg: CapacityConfig):
    """`worker_core_apart` for a vLLM server started here with --pin-cores, else nothing."""
    if cfg.pin_cores and cfg.engine == "vllm" and not cfg.base_url:
        return worker_core_apart()
    return contextlib.nullcontext({})


def main(cfg: CapacityConfig) -> dict:
    out = run_dir("week2", f"capacity-{cfg.name}")
    terms = [parse_term(t) for t in cfg.slo]
    with placement(cfg) as pin, served(cfg, out, pin) as srv:
        layout = core_layout(pin)
        if pin:
            lower_client_priority(cfg.client_nice)  # after the server started
        url = srv.url if srv is not None else cfg.base_url
        base = base_bench(cfg, url, cfg.tokenizer or (None if cfg.base_url else model_of(cfg)))
        searches = search_all(cfg, base, terms)
        found = [s["capacity"] for s in searches if s["capacity"] is not None]
        check = None
        if found and cfg.verify_runs:
            check = verify(cfg, base, terms, statistics.median(found))
        command = getattr(srv, "cmd", None)
    results = {
        **conclude(cfg, searches, check),
        "slo": [str(t) for t in terms],
        "method": METHOD,
        "searches": searches,
        "verification": check,
        "config": asdict(cfg),
        "server_command": command,
        "cpu_layout": layout,
    }
    save_results("week2", f"capacity-{cfg.name}", results)
    plot_search(results, out / "capacity.png")
    write_page(results, out / "report.md")
    log.info("capacity %s req/s (%s)", results["capacity"], out)
    return results


def parse_args(argv: list[str] | None = None) -> CapacityConfig:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    p = build_parser(CapacityConfig, description=__doc__)
    try:
        return config_from_args(CapacityConfig, p.parse_args(argv), server_args=extra)
    except ValueError as e:
        p.error(str(e))
        raise


if __name__ == "__main__":
    cfg = parse_args()
    with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: the server started is stopped
        main(cfg)
