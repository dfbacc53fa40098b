"""Week 2: the capacity search (capacity_search.py) against fake servers whose latency curve is
known, with and without measurement noise, and the multi-turn study's checks and report part."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from common.results import write_json_atomic
from week2_serving.harness.capacity_search import (
    crossing,
    interleave,
    monotone_fit,
    search_capacity,
    search_steps,
    slo_ratio,
)
from week2_serving.harness.prefix_study import checks, prefix_section
from week2_serving.harness.slo import Probe, attainment, parse_term

SATURATED = 10.0  # req/s where the fake server's queue grows without bound
BOUNDARY = 8.0  # p99 TTFT = 100 ms / (1 - rate/10) reaches the 500 ms bound at 8 req/s


def noisy_server(noise: float, seed: int, calls: list | None = None):
    """p99 TTFT of 100 ms / (1 - rate / SATURATED), times a log-normal noise of sigma
    `noise` per probe; the SLO is 500 ms, so the true boundary is BOUNDARY."""
    rng = random.Random(seed)

    def probe(rate: float) -> Probe:
        if calls is not None:
            calls.append(rate)
        p99 = 100 / (1 - rate / SATURATED) if rate < SATURATED else math.inf
        p99 *= math.exp(rng.gauss(0.0, noise))
        return Probe(rate, p99 <= 500, {"slo_ratio": p99 / 500})

    return probe


def req(ttft_s: float, latency_s: float, n: int, ok: bool = True) -> dict:
    return {"success": ok, "ttft": ttft_s, "latency": latency_s, "output_tokens": n}


def test_the_slo_ratio_is_at_most_one_exactly_when_the_slo_is_met():
    rng = random.Random(1)
    terms = [parse_term("ttft_p90:100"), parse_term("tpot_p50:10")]
    for _ in range(30):
        reqs = [
            req(t, t + rng.uniform(0.001, 0.02) * 9, 10, ok=rng.random() > 0.03)
            for t in (rng.uniform(0.01, 0.15) for _ in range(rng.randint(1, 40)))
        ]
        assert (slo_ratio(reqs, terms) <= 1) == attainment(reqs, terms)["meets"]
    assert slo_ratio([req(0.05, 0.05, 1, ok=False)], terms) == math.inf  # a failure: inf
    # the value at the share over the bound: p50 of TTFT 10/20/30/40 ms is the 2nd smallest
    four = [req(t, t, 1) for t in (0.01, 0.02, 0.03, 0.04)]
    assert slo_ratio(four, [parse_term("ttft_p50:40")]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no requests"):
        slo_ratio([], terms)


def test_the_monotone_fit_pools_violators_and_the_crossing_interpolates():
    assert monotone_fit([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    assert monotone_fit([3.0, 2.0, 1.0]) == [2.0, 2.0, 2.0]
    assert monotone_fit([-1.0, 0.5, 2.0]) == [-1.0, 0.5, 2.0]  # already monotone: unchanged
    assert crossing([1.0, 2.0, 3.0], [-1.0, -0.5, 0.5]) == pytest.approx(2.5)
    assert crossing([1.0, 2.0], [-1.0, -0.5]) is None  # nothing misses
    assert crossing([1.0, 2.0], [0.1, 0.5]) is None  # nothing meets


def test_without_noise_the_search_lands_on_the_boundary_less_its_headroom():
    calls: list[float] = []
    found = search_capacity(noisy_server(0.0, 0, calls), 1.0, SATURATED, 0.02, 12, 0.05)
    assert found["boundary"] == pytest.approx(BOUNDARY, rel=0.03)
    assert found["capacity"] == pytest.approx(found["boundary"] * 0.95)
    assert calls[:2] == [1.0, SATURATED] and len(calls) <= 12
    lo, hi = found["bracket"]
    assert lo <= BOUNDARY <= hi


def test_under_noise_the_search_reproduces_within_ten_percent():
    """Probes whose p99 wobbles by ~10% (log-normal): eight searches, each its own noise,
    find capacities within 10% of each other and of the truth, in 6 probes each."""
    found = [
        search_capacity(noisy_server(0.10, seed), 1.0, SATURATED, 0.05, 6, 0.05)
        for seed in range(8)
    ]
    caps = [f["capacity"] for f in found]
    median = statistics.median(caps)
    assert (max(caps) - min(caps)) / median <= 0.10
    assert median == pytest.approx(BOUNDARY * 0.95, rel=0.06)
    assert all(len(f["probes"]) <= 6 for f in found)


def test_the_edges_top_met_bottom_missed_and_bad_arguments():
    fast = search_capacity(noisy_server(0.0, 0), 1.0, 5.0)  # the top meets: it bounds it
    assert fast["boundary"] == 5.0 and "throughput, not latency" in fast["why"]
    assert fast["capacity"] == pytest.approx(5.0 * 0.95)  # the same headroom below it
    calls: list[float] = []
    low_missed = search_capacity(noisy_server(0.0, 0, calls), 9.0, SATURATED, 0.05, 8)
    assert calls[:2] == [9.0, 4.5] and SATURATED not in calls  # halved; 9 became the top
    assert low_missed["boundary"] == pytest.approx(BOUNDARY, rel=0.06)
    hopeless = search_capacity(lambda r: Probe(r, False, {"slo_ratio": 9.0}), 1.0, 2.0)
    assert hopeless["capacity"] is None and "missed even" in hopeless["why"]
    for bad in ({"low": 0.0}, {"low": 3.0}, {"tolerance": 0.0}, {"headroom": 1.0}):
        kwargs = {"low": 1.0, "high": 2.0, **bad}
        with pytest.raises(ValueError):
            search_capacity(noisy_server(0.0, 0), **kwargs)


def study(on_ttft: list[float], off_ttft: list[float], hit_on: float) -> dict:
    turns = lambda ms: {  # noqa: E731
        str(t): {"n": 4, "mean_ttft_ms": v, "median_ttft_ms": v, "mean_prompt_len": 100 * (t + 1)}
        for t, v in enumerate(ms)
    }
    return {
        "hit_rate_on": hit_on,
        "hit_rate_off": 0.0,
        "on": {"per_turn": turns(on_ttft)},
        "off": {"per_turn": turns(off_ttft)},
    }


def test_the_prefix_study_checks_both_claims_and_the_report_shows_it(tmp_path):
    good = study([20.0, 15.0, 16.0], [20.0, 30.0, 40.0], hit_on=0.5)
    assert checks(good) == {"hit_rate_on_positive": True, "later_turns_lower": True}
    assert not checks(study([20.0, 15.0, 45.0], [20.0, 30.0, 40.0], 0.5))["later_turns_lower"]
    # of 4 turns the second half (turns 3, 4) is judged; turn 2 may go either way
    assert checks(study([20.0, 31.0, 15.0, 16.0], [20.0, 30.0, 40.0, 50.0], 0.5))[
        "later_turns_lower"
    ]
    assert not checks(study([20.0, 15.0], [20.0, 30.0], hit_on=0.0))["hit_rate_on_positive"]
    sweep = tmp_path / "week2" / "sweep-cpu"
    sweep.mkdir(parents=True)
    assert prefix_section(sweep, [], None) is None  # no study: no section
    write_json_atomic(tmp_path / "week2" / "prefix-study-vllm" / "results.json", good)
    text = prefix_section(sweep, [], None)
    assert "| prefix-study-vllm | 3 | 300 | 16.0 | 40.0 |" in text
    assert "hit rate on 50%" in text and "../prefix-study-vllm/ttft_by_turn.png" in text


def fake_bench(cfg) -> dict:
    """bench.main's results for the fake server: p99-ish TTFT 100 ms / (1 - rate/10)."""
    if cfg.max_concurrency == 1:
        return {"request_throughput": 1.0}
    if math.isinf(cfg.request_rate):
        return {"request_throughput": SATURATED}
    ttft = 0.1 / (1 - cfg.request_rate / SATURATED) if cfg.request_rate < SATURATED else 60.0
    reqs = [
        {**req(ttft * (0.5 + i / 40), ttft + 0.2, 11), "run": k}
        for k in range(cfg.num_runs)
        for i in range(20)
    ]
    done = min(cfg.request_rate, SATURATED)
    return {
        "requests": reqs,
        "num_runs": cfg.num_runs,
        "request_throughput": done,
        "output_throughput": 11 * done,
    }


def test_the_study_wires_searches_checks_and_cost_together(tmp_path, monkeypatch):
    from week2_serving.harness import capacity

    monkeypatch.setenv("IE_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(capacity.bench, "main", fake_bench)
    cfg = capacity.CapacityConfig(
        slo=["ttft_p99:500"], base_url="http://fake", tokenizer="tok", searches=2, verify_runs=3
    )
    res = capacity.main(cfg)
    # p99 of 20 is the slowest: 0.975 x 100 ms / (1 - r/10), 500 ms at r = 8.05 req/s
    assert res["boundaries"] == [pytest.approx(8.05, rel=0.03)] * 2
    assert res["capacity"] == pytest.approx((1 - cfg.headroom) * res["boundaries"][0])
    assert res["spread_of_median"] == 0  # no noise: the two searches agree
    assert res["verified"] and res["verification"]["at"]["summary"]["runs_ratio"][0] < 1
    assert res["usd_per_1m_output_tokens"] == pytest.approx(
        2.0 / (11 * res["capacity"] * 3600) * 1e6
    )
    assert (tmp_path / "week2" / "capacity-default" / "report.md").is_file()


def drifting_machine(clock: list[int], slowdown: float = 0.01):
    """A server that gets slower with every probe it serves (the machine drifts): its
    saturated rate falls by `slowdown` per probe, shared by every search that probes it."""

    def probe(rate: float) -> Probe:
        clock[0] += 1
        saturated = SATURATED * (1 - slowdown) ** clock[0]
        p99 = 100 / (1 - rate / saturated) if rate < saturated else math.inf
        return Probe(rate, p99 <= 500, {"slo_ratio": p99 / 500})

    return probe


def test_interleaved_searches_take_turns_and_share_the_drift():
    """Three searches in turn on a drifting machine find nearly the same capacity; one after
    the other, each meets a slower machine and they spread apart."""
    clock = [0]
    order: list[int] = []

    def tagged(i: int, probe):
        def run(rate: float) -> Probe:
            order.append(i)
            return probe(rate)

        return run

    machine = drifting_machine(clock)
    turns = [(search_steps(1.0, SATURATED, 0.02, 8, 0.05), tagged(i, machine)) for i in range(3)]
    together = [r["capacity"] for r in interleave(turns)]
    assert order[:6] == [0, 1, 2, 0, 1, 2]  # one probe each, in turn
    clock[0] = 0
    apart = [
        search_capacity(drifting_machine(clock), 1.0, SATURATED, 0.02, 8, 0.05)["capacity"]
        for _ in range(3)
    ]

    def spread(caps):
        return (max(caps) - min(caps)) / statistics.median(caps)

    assert spread(together) < 0.05 < 0.10 < spread(apart)
    assert (
        search_capacity(noisy_server(0.0, 0), 1.0, SATURATED, 0.02, 12, 0.05)
        == interleave([(search_steps(1.0, SATURATED, 0.02, 12, 0.05), noisy_server(0.0, 0))])[0]
    )  # one search alone: the same answer either way


def test_duration_sizes_each_open_loop_run_by_time_and_checks_take_turns(tmp_path, monkeypatch):
    """With --duration every open-loop run sends rate x duration requests (the saturated
    bracket still sends --num-prompts at once), and the check's runs alternate at / above."""
    from week2_serving.harness import capacity

    calls = []

    def recording(cfg):
        calls.append((cfg.request_rate, cfg.num_prompts, cfg.max_concurrency, cfg.num_runs))
        return fake_bench(cfg)

    monkeypatch.setenv("IE_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(capacity.bench, "main", recording)
    cfg = capacity.CapacityConfig(
        slo=["ttft_p99:500"], base_url="http://fake", tokenizer="tok", verify_runs=3,
        duration=10.0, num_prompts=100,
    )  # fmt: skip
    res = capacity.main(cfg)
    sat = [c for c in calls if math.isinf(c[0]) and c[2] is None]
    assert sat and all(n == 100 for _, n, _, _ in sat)  # the bracket: --num-prompts at once
    open_loop = [c for c in calls if math.isfinite(c[0])]
    for rate, n, _, _ in open_loop:
        assert n == max(capacity.MIN_PROMPTS, round(rate * 10.0))
    assert any(n == capacity.MIN_PROMPTS for _, n, _, _ in open_loop)  # the slow bottom end
    checks = open_loop[-6:]  # the check: at, above, at, above, at, above; one run each
    cap = res["capacity"]
    assert [c[0] for c in checks] == [cap, 1.25 * cap] * 3 and {c[3] for c in checks} == {1}
    at = res["verification"]["at"]["summary"]
    assert len(at["runs_meet"]) == 3 and res["verified"]  # each side's runs pooled
    for bad in (-1.0, math.nan, math.inf, 1e9):
        with pytest.raises(ValueError, match="duration"):
            capacity.CapacityConfig(duration=bad)


def test_the_vllm_worker_gets_its_own_cores_and_the_rest_shares_the_last(monkeypatch):
    """Each machine branch of launch.worker_core_apart, with the cores passed in: several cores
    (the worker binds to all but the last, this process and what it starts run on the last,
    both put back on exit) and one core (nothing changes)."""
    from week2_serving.harness import capacity, launch

    calls = []
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(launch.os, "sched_setaffinity", lambda pid, c: calls.append(set(c)))
    monkeypatch.setattr(launch.os, "getpriority", lambda which, who: 0)
    monkeypatch.setattr(launch.os, "setpriority", lambda which, who, n: calls.append(("nice", n)))
    with launch.worker_core_apart([0, 1, 2, 3]) as pin:
        assert pin == {"VLLM_CPU_OMP_THREADS_BIND": "0,1,2"} and calls == [{3}]
    assert calls == [{3}, {0, 1, 2, 3}, ("nice", 0)]  # affinity and niceness put back
    calls.clear()
    with launch.worker_core_apart([5]) as pin:
        assert pin == {}
    assert calls == []  # one core: nothing to pin
    for bad in (-1, 20, True, 2.5):
        with pytest.raises(ValueError, match="client_nice"):
            launch.lower_client_priority(bad)
        with pytest.raises(ValueError, match="client_nice"):
            capacity.CapacityConfig(client_nice=bad)
    # a server at --base-url is not ours to place; --no-pin-cores leaves it to the OS
    for cfg in (
        capacity.CapacityConfig(base_url="http://x"),
        capacity.CapacityConfig(pin_cores=False),
    ):
        with capacity.placement(cfg) as pin:
            assert pin == {}


def test_validate_binds_the_worker_and_the_clients_but_leaves_the_server_free(monkeypatch):
    """launch.clients_apart, each machine branch with the cores passed in: several cores (the
    worker's binding for the server, the clients moved to the last core only when asked, after
    the server started; affinity and niceness put back on exit) and one core (nothing)."""
    from week2_serving.harness import launch

    calls = []
    monkeypatch.setattr(launch.os, "sched_getaffinity", lambda pid: {0, 1, 2})
    monkeypatch.setattr(launch.os, "sched_setaffinity", lambda pid, c: calls.append(set(c)))
    monkeypatch.setattr(launch.os, "getpriority", lambda which, who: 0)
    monkeypatch.setattr(launch.os, "setpriority", lambda which, who, n: calls.append(("nice", n)))
    with launch.clients_apart([0, 1, 2]) as place:
        assert place["env"] == {"VLLM_CPU_OMP_THREADS_BIND": "0,1"}
        assert calls == []  # the server starts from here with every core
        place["pin_clients"]()
        assert calls == [{2}]
        assert place["layout"] == {"worker": "0,1", "server_rest": [0, 1, 2], "clients": [2]}
    assert calls == [{2}, {0, 1, 2}, ("nice", 0)]
    calls.clear()
    with launch.clients_apart([3]) as place:
        assert place["env"] == {} and place["layout"] is None
        place["pin_clients"]()
    assert calls == []  # one core: nothing to pin
