"""Week 2b speed tools: the bench's run-by-run targets, and the profile and lever scripts on
the tiny model (tests/conftest.py `tiny_gpt`: a second or two each; speed is not checked)."""

from __future__ import annotations

import pytest

from week2_serving.engine import bench as engine_bench
from week2_serving.engine.phases import PhaseTimer


def cell(thr: float, runs: list[float] | None = None) -> dict:
    return {
        "output_throughput": thr,
        "mean_ttft_ms": 1.0,
        "failed": 0,
        "runs_output_throughput": runs or [],
    }


def test_continuous_vs_static_is_judged_run_by_run():
    cells = {
        ("continuous", "mixed-c32"): cell(1600, [1600, 1500, 1700]),
        ("static", "mixed-c32"): cell(1000, [1000, 1100, 1000]),
        ("continuous", "c1"): cell(210),
        ("vllm", "c1"): cell(200),
    }
    s = engine_bench.summarize(cells)
    assert s["continuous_vs_static_mixed_c32_runs"] == pytest.approx([1.6, 1500 / 1100, 1.7])
    assert s["targets"]["continuous_vs_static_mixed_1_5x_every_run"] is False  # run 2 misses
    assert s["targets"]["ours_vs_vllm_at_least_1"] == {"c1": True, "c8": None, "c32": None}
    cells[("static", "mixed-c32")] = cell(1000, [1000, 1000, 1000])
    assert engine_bench.summarize(cells)["targets"]["continuous_vs_static_mixed_1_5x_every_run"]
    assert "continuous_vs_static_padded_mixed_1_5x_every_run" not in s["targets"]  # not run
    cells[("static-padded", "mixed-c32")] = cell(800, [800, 1100, 900])  # run 2 misses
    s = engine_bench.summarize(cells)
    assert s["continuous_vs_static_padded_mixed_c32_runs"] == pytest.approx(
        [2, 1500 / 1100, 1700 / 900]
    )
    assert s["targets"]["continuous_vs_static_padded_mixed_1_5x_every_run"] is False
    one_run = {("continuous", "mixed-c32"): cell(1500), ("static", "mixed-c32"): cell(1000)}
    assert engine_bench.run_ratios(one_run, *one_run) == [1.5]  # no runs list: the one run


def test_phase_timer_counts_nested_time_once():
    ticks = iter([0.0, 1.0, 3.0, 3.5])  # outer starts, inner 1 -> 3, outer ends at 3.5
    t = PhaseTimer(clock=lambda: next(ticks))
    with t.phase("outer"), t.phase("inner"):
        pass
    assert t.calls == {"outer": 1, "inner": 1}
    assert t.seconds == {"outer": 1.5, "inner": 2.0}  # outer holds only its own time


def test_profile_and_levers_run_and_write_their_results(tiny_gpt, runs_dir):
    from week2_serving.engine import levers, profile

    res = profile.main(
        profile.ProfileConfig(model=str(tiny_gpt["hf_dir"]), num_requests=3, output_len=4)
    )
    for side in ("before", "after"):
        assert res[side]["output_tokens"] == 12 and res[side]["us_per_token"]["sampling"] > 0
        assert res[side]["us_per_token"]["attention (SDPA, or the paged op)"] > 0
    assert res["before"]["us_per_token"]["attention (K/V gather)"] > 0  # SDPA over a copy
    assert (runs_dir / "week2" / "engine-profile" / "step_breakdown.png").exists()
    cfg = levers.LeversConfig(  # the torch.compile row has its own test (engine_speed)
        model=str(tiny_gpt["hf_dir"]),
        concurrency=(1, 2),
        output_len=3,
        repeats=1,
        compile_row=False,
    )
    table = levers.main(cfg)["levers"]
    compiled = {row for row, (o, _) in levers.ROWS.items() if o.get("torch_compile")}
    assert (
        set(table) == set(levers.ROWS) - compiled
        and compiled
        and table["all off (reference paths)"]["c2"]["vs_all_off"] == 1.0
    )


@pytest.mark.parametrize("bad", [dict(num_requests=0), dict(threads=True), dict(output_len=10**9)])
def test_profile_config_refuses_hostile_numbers(bad):
    from week2_serving.engine.profile import ProfileConfig

    with pytest.raises(ValueError, match=next(iter(bad))):
        ProfileConfig(**bad)


def test_each_engine_sweep_has_its_own_results_and_the_bf16_one_has_no_static_bar():
    from week2_serving.harness.sweep_config import SweepConfig
    from week2_serving.tables_engine import bf16_numbers, bf16_table

    assert engine_bench.results_name("engine-cpu") == "engine"
    bf16 = SweepConfig.from_yaml(engine_bench.CONFIG_BF16)
    assert engine_bench.results_name(bf16.name) == "engine-bf16"
    assert all("bfloat16" in s["args"] for s in bf16.servers)  # both engines in bf16
    cells = {
        (s, load): {"output_throughput": t, "failed": 0}
        for (s, load), t in {("vllm", "c8"): 400.0, ("continuous", "c8"): 500.0}.items()
    }
    summary = engine_bench.summarize(cells)
    assert "continuous_vs_static_mixed_1_5x_every_run" not in summary["targets"]
    assert summary["targets"]["ours_vs_vllm_at_least_1"]["c8"] is True
    results = {"summary": summary, "cells": {f"{s}/{ld}": c for (s, ld), c in cells.items()}}
    table = bf16_table(bf16_numbers(results))
    assert "**1.25x**" in table and "| c1 | – | – | – |" in table and "median of 1 run" in table
