"""Week 2: the README tables of the speed levers and the step breakdown read their results."""

from __future__ import annotations

from week2_serving.tables_engine import (
    levers_numbers,
    levers_table,
    profile_numbers,
    profile_table,
)


def test_the_levers_table_has_a_row_per_lever_with_its_ratio_and_whether_it_was_kept():
    cell = lambda tok, ratio: {
        "tokens_per_s": tok,
        "range": [tok - 10, tok + 10],
        "vs_all_off": ratio,
    }  # noqa: E731
    results = {
        "config": {"repeats": 3, "output_len": 64},
        "levers": {
            "all off": {"c1": cell(100, 1.0), "c8": cell(500, 1.0)},
            "lever x": {"c1": cell(150, 1.5), "c8": cell(400, 0.8)},
        },
        "kept": {"all off": "reference", "lever x": "not kept (off)"},
    }
    table = levers_table(levers_numbers(results))
    row = next(line for line in table.splitlines() if line.startswith("| lever x"))
    assert "150 [140–160] (1.50x)" in row and "400 [390–410] (0.80x)" in row
    assert row.endswith("| not kept (off) |")
    assert "c8: output tok/s" in table and "median of 3 runs" in table
    del results["kept"]  # results from before `kept` was recorded: an empty cell, not a guess
    assert levers_table(levers_numbers(results)).splitlines()[3].endswith("|  |")


def test_the_step_breakdown_table_shows_each_phase_before_and_after():
    phases = {"schedule": 5.0, "forward": 200.0}
    results = {
        "config": {"num_requests": 32, "output_len": 128},
        "before": {"tokens_per_s": 1000.0, "us_per_token": phases, "us_per_token_untimed": 1.0},
        "after": {
            "tokens_per_s": 1500.0,
            "us_per_token": {"schedule": 4.0, "forward": 120.0},
            "us_per_token_untimed": 0.5,
        },
        "speedup": 1.5,
        "async_bridge": {"overhead_us_per_token": 150.0},
    }
    table = profile_table(profile_numbers(results))
    assert "| forward | 200.0 | 120.0 |" in table
    assert "**1,000**" in table and "**1,500**" in table
    assert "1.50x" in table and "150 µs more" in table
