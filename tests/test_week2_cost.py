"""Cost per 1M output tokens inline in the portfolio's sweep (lever) table, at a stated price."""

from __future__ import annotations

import pytest

from common.results import write_json_atomic
from week2_serving import cost, portfolio
from week2_serving.arith.hardware import accelerators

CPU_ENV = {"cpu_model": "test CPU", "cpu_count": 2, "gpu_name": None}


def cell(server: str, tput: float, env: dict = CPU_ENV) -> dict:
    return {"server_name": server, "load_name": "c8", "output_throughput": tput,
            "mean_ttft_ms": 40.0, "p99_ttft_ms": 80.0, "mean_tpot_ms": 12.0, "failed": 0,
            "environment": env}  # fmt: skip


def test_cost_is_price_over_tokens_per_hour():
    cpu_price = accelerators()["cpu-2core"].price_per_hour
    expected = cpu_price / (250 * 3600) * 1e6  # $/h over tokens/h, per million
    assert cost.cost_text(cell("a", 250)) == f"${expected:.2f}"
    h200 = {**CPU_ENV, "gpu_name": "NVIDIA H200"}
    h200_price = accelerators()["h200"].price_per_hour
    assert cost.cost_text(cell("a", 1000, h200)) == f"${h200_price / 3.6:.2f}"
    assert cost.cost_text(cell("a", 1000, {**CPU_ENV, "gpu_name": "Mystery X9"})) == "n/a"
    assert cost.cost_text(cell("a", 0)) == "n/a"  # nothing served: no cost, not a division by 0
    header = cost.cost_header([cell("a", 1), cell("b", 1, h200)])
    assert f"${cpu_price:g}/h (cpu-2core)" in header and f"${h200_price:g}/h (h200)" in header


@pytest.mark.parametrize("faster", [2.0, 4.0])
def test_the_sweep_table_carries_the_cost_column(tmp_path, faster):
    sweep = tmp_path / "week2" / "sweep-cpu"
    for c in (cell("default", 100.0), cell("int8", 100.0 * faster)):
        write_json_atomic(sweep / c["server_name"] / c["load_name"] / "results.json", c)
    text = "\n".join(portfolio.sweep_part(sweep, tmp_path / "report"))
    price = accelerators()["cpu-2core"].price_per_hour
    assert f"failed | $ per 1M output tok (at ${price:g}/h (cpu-2core)) |" in text
    base = price / (100 * 3600) * 1e6
    assert f"| default | c8 | 100 | 40 | 80 | 12.00 | 0 | ${base:.2f} |" in text
    assert (
        f"| int8 | c8 | {100 * faster:.0f} | 40 | 80 | 12.00 | 0 | ${base / faster:.2f} |" in text
    )
