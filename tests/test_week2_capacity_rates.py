"""Week 2 open-loop rate sweeps: the sweep profile's rates, the command line, the table."""

from __future__ import annotations

import pytest

from week2_serving.harness.rates import parse_args, sweep_rates, table


def test_sweep_rates_lie_strictly_between_the_measured_ends():
    assert sweep_rates(1.0, 5.0, 3) == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="does not batch"):
        sweep_rates(5.0, 5.0, 3)


def test_the_command_line_takes_a_rate_list_or_the_sweep_profile():
    cfg, rates, num = parse_args(["--request-rates", "1", "2.5", "--num-runs", "3"])
    assert rates == [1.0, 2.5] and cfg.num_runs == 3 and num == 5
    cfg, rates, num = parse_args(["--profile", "sweep", "--num-rates", "2"])
    assert rates is None and num == 2
    with pytest.raises(SystemExit):
        parse_args([])  # neither: a usage error


def point(rate: float, scale: float, runs: int) -> dict:
    p = {"config": {"request_rate": rate}, "num_runs": runs}
    for key in ("request_throughput", "output_throughput"):
        p[key] = rate * scale
    for m in ("ttft", "tpot", "itl", "e2el"):
        for stat in ("median", "p99"):
            p[f"{stat}_{m}_ms"] = 10.0 * rate
    p["spread"] = {"p99_ttft_ms": {"median": 10.0 * rate, "min": 9.0 * rate, "max": 12.0 * rate}}
    return p


def test_the_table_shows_medians_with_min_max_when_runs_repeat():
    text = table([point(1.0, 0.9, 3), point(2.0, 0.9, 1)])
    first, second = text.splitlines()[2:4]
    assert first.startswith("| 1 | 0.90 | 1 |") and "10.0 / 10.0 [9.0–12.0]" in first
    assert "[" not in second  # one run: no range
