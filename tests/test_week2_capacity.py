"""Week 2 capacity search: SLO terms, attainment and bisection, against a fake server whose
latency is a known function of the rate (deterministic), and the page it writes."""

from __future__ import annotations

import math

import pytest

from common.results import write_json_atomic
from week2_serving.harness.capacity import CapacityConfig, conclude, cost_per_million, parse_args
from week2_serving.harness.capacity_page import capacity_section, plot_search, write_page
from week2_serving.harness.capacity_search import search_capacity
from week2_serving.harness.slo import Probe, SLOTerm, attainment, parse_term


def test_slo_terms_parse_and_bad_ones_say_the_syntax():
    assert parse_term("ttft_p99:500") == SLOTerm("ttft", 0.99, 500.0)
    assert parse_term("tpot:50", default_share=0.9) == SLOTerm("tpot", 0.9, 50.0)
    assert str(parse_term("e2el_p99.9:2000")) == "e2el_p99.9:2000"
    for bad in ("ttft_p99", "itl_p99:5", "ttft_p200:5"):
        with pytest.raises(ValueError, match="SLO"):
            parse_term(bad)
    with pytest.raises(SystemExit):
        parse_args(["--slo", "ttft-p99:500"])
    cfg = parse_args(["--slo", "ttft_p90:100", "--", "--no-enable-prefix-caching"])
    assert cfg.slo == ["ttft_p90:100"] and cfg.server_args == ["--no-enable-prefix-caching"]


def req(ttft_s: float, latency_s: float, n: int, ok: bool = True) -> dict:
    return {"success": ok, "ttft": ttft_s, "latency": latency_s, "output_tokens": n}


def test_attainment_counts_failures_as_misses_and_judges_each_request():
    terms = [parse_term("ttft_p75:100"), parse_term("tpot_p75:10")]
    reqs = [
        req(0.05, 0.05 + 0.009 * 10, 11),  # both fine
        req(0.05, 0.05 + 0.009 * 10, 11),
        req(0.20, 0.20 + 0.001 * 10, 11),  # TTFT too slow
        req(0.01, 0.01, 1, ok=False),  # failed: a miss for every term
    ]
    att = attainment(reqs, terms)
    assert att["shares"] == {"ttft_p75:100": 0.5, "tpot_p75:10": 0.75}
    assert not att["meets"] and att["good_share"] == 0.5
    assert attainment(reqs[:3], [parse_term("tpot_p75:10")])["meets"]


def fake_server(capacity: float, calls: list):
    """p99 TTFT = 100 ms / (1 - rate/capacity): fine far below capacity, unbounded near it.
    With an SLO of 500 ms the true boundary is 0.8 x capacity."""

    def probe(rate: float) -> Probe:
        calls.append(rate)
        p99 = 100 / (1 - rate / capacity) if rate < capacity else math.inf
        summary = {"p99_ttft_ms": p99, "p99_tpot_ms": 5.0, "slo_ratio": p99 / 500}
        return Probe(rate, p99 <= 500, summary)

    return probe


def test_conclude_gives_the_median_capacity_its_spread_and_cost(tmp_path):
    cfg = CapacityConfig(usd_per_hour=3.6)
    searches = [{"capacity": c, "why": ""} for c in (4.0, 5.0, 4.5)]
    check = {
        "at": {"meets": True, "summary": {"output_throughput": 100.0}},
        "above": {"meets": False, "summary": {}},
    }
    out = conclude(cfg, searches, check)
    assert out["capacity"] == 4.5 and out["spread_of_median"] == pytest.approx(1 / 4.5)
    assert out["usd_per_1m_output_tokens"] == pytest.approx(10.0) and out["verified"]
    assert cost_per_million(1.0, 0) is None
    assert conclude(cfg, [{"capacity": None, "why": "no"}], None)["capacity"] is None


def test_the_page_and_plot_are_written(tmp_path):
    calls: list[float] = []
    found = search_capacity(fake_server(10.0, calls), 1.0, 12.0, tolerance=0.1)
    found["probes"] = [p.__dict__ for p in found["probes"]]
    results = {
        "config": {"name": "fake", "usd_per_hour": 2.0},
        "slo": ["ttft_p99:500"],
        "method": "bisection",
        "capacity": found["capacity"],
        "capacities": [found["capacity"]],
        "searches": [found],
        "verification": None,
    }
    assert plot_search(results, tmp_path / "c.png").stat().st_size > 1000
    text = write_page(results, tmp_path / "r.md").read_text()
    assert "**Capacity: " in text and sum(
        line.startswith("| 1.") for line in text.splitlines()
    ) == len(calls)
    # the sweep report's section: one row per study beside the sweep, and the frontier plot
    sweep = tmp_path / "week2" / "sweep-cpu"
    sweep.mkdir(parents=True)
    assert capacity_section(sweep, [], None) is None  # no study: no section
    results["config"].update(engine="vllm", server_args=["--no-enable-prefix-caching"])
    results["verification"] = {"at": {"meets": True}, "above": {"meets": False}}
    write_json_atomic(tmp_path / "week2" / "capacity-fake" / "results.json", results)
    section = capacity_section(sweep, [], None)
    assert "vllm · hf-model --no-enable-prefix-caching" in section
    assert "| meets | misses |" in section and (sweep / "slo_frontier.png").is_file()
