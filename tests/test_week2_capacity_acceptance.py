"""Week 2: the acceptance command's verdicts, read from results files written here."""

from __future__ import annotations

import pytest

from common.results import write_json_atomic
from week2_serving.harness.acceptance import AcceptanceConfig, judge
from week2_serving.harness.capacity_levers import LeversConfig, lever_studies


def probe(rate: float, meets: bool) -> dict:
    return {"rate": rate, "meets": meets, "summary": {"shares": {"ttft_p99:500": 0.99}}}


def write_all(week, caps, at_meets=True, above_meets=False, within=True, hit=0.4, on_ms=10.0):
    write_json_atomic(
        week / "capacity-acceptance" / "results.json",
        {
            "capacity": sorted(caps)[len(caps) // 2],
            "capacities": caps,
            "spread_of_median": (max(caps) - min(caps)) / sorted(caps)[len(caps) // 2],
            "verification": {"at": probe(1.0, at_meets), "above": probe(1.25, above_meets)},
        },
    )
    row = {"rate": 0.5, "mean_ttft_ms": {"relative_diff": 0.03, "within": True}}
    write_json_atomic(
        week / "validate" / "results.json",
        {"guidellm": {"rows": [row], "all_within_tolerance": within}},
    )
    turns = {str(t): {"median_ttft_ms": 10.0 * (t + 1)} for t in range(3)}
    fast = {str(t): {"median_ttft_ms": on_ms} for t in range(3)}
    write_json_atomic(
        week / "prefix-study-vllm" / "results.json",
        {
            "hit_rate_on": hit,
            "last_turn_ttft_ms": {"on": 10.0, "off": 30.0},
            "on": {"per_turn": fast},
            "off": {"per_turn": turns},
        },
    )


def test_every_item_passes_or_fails_on_its_own_numbers(tmp_path):
    write_all(tmp_path, [1.0, 1.05, 1.02])
    verdicts = dict((item, v) for item, v, _ in judge(tmp_path, 0.10))
    assert set(verdicts.values()) == {"PASS"} and len(verdicts) == 6
    bad = {"at_meets": False, "above_meets": True, "within": False, "hit": 0, "on_ms": 99.0}
    write_all(tmp_path, [1.0, 1.3, 1.1], **bad)
    verdicts = dict((item, v) for item, v, _ in judge(tmp_path, 0.10))
    assert set(verdicts.values()) == {"FAIL"}


def test_missing_results_are_not_run_and_bad_options_are_refused(tmp_path):
    assert {v for _, v, _ in judge(tmp_path, 0.1)} == {"NOT RUN"}
    write_json_atomic(
        tmp_path / "validate" / "results.json", {"guidellm": {"skipped": "not installed"}}
    )
    skipped = [d for item, v, d in judge(tmp_path, 0.1) if item == "guidellm agrees"]
    assert skipped == ["not installed"]
    with pytest.raises(ValueError, match="choose from"):
        AcceptanceConfig(only=["speed"])


def test_capacity_levers_are_the_sweeps_servers_and_our_engine(tmp_path, monkeypatch):
    monkeypatch.setenv("IE_RUNS_DIR", str(tmp_path))
    (tmp_path / "week1" / "hf-model").mkdir(parents=True)
    yaml = tmp_path / "s.yaml"
    yaml.write_text(
        "name: t\nengine: vllm\nmodel: runs/week1/hf-model\n"
        "servers:\n  - {name: default, args: []}\n"
        "  - {name: no-pc, args: ['--no-enable-prefix-caching']}\n"
        "  - {name: int8, model: runs/week2/quantized/int8, args: []}\n"
        "loads:\n  - {name: c1, max_concurrency: 1}\n"
    )
    studies = lever_studies(LeversConfig(sweep_config=str(yaml), searches=2))
    assert [s.name for s in studies] == ["default", "no-pc", "engine"]  # int8 not made: skipped
    assert studies[1].server_args == ["--no-enable-prefix-caching"] and studies[1].searches == 2
    assert studies[2].engine == "engine" and studies[2].model == str(tmp_path / "week1/hf-model")
    only = lever_studies(LeversConfig(sweep_config=str(yaml), levers=["no-pc"]))
    assert [s.name for s in only] == ["no-pc"]
    with pytest.raises(ValueError, match="choose from"):
        lever_studies(LeversConfig(sweep_config=str(yaml), levers=["turbo"]))


def test_the_prefix_study_alternates_its_two_servers(tmp_path, monkeypatch):
    from tests.test_week2_sweep import SpawnableServer
    from week2_serving.harness import prefix_study as ps

    events: list[tuple] = []

    def fake_launch(engine, model, extra, **kwargs):
        assert extra[0] == "--enforce-eager"  # vLLM serves the study eager: faster start-ups
        server = SpawnableServer("off" if "--no-enable-prefix-caching" in extra else "on", events)
        server.url = f"http://{server.name}"
        return server

    sent: list[str] = []

    def fake_bench(cfg):  # the cache on makes every turn as fast as the first
        sent.append(cfg.base_url)
        on = cfg.base_url.endswith("on")
        rows = [
            {"turn": t, "ttft": 0.01 * (1 if on else t + 1), "prompt_len": 9, "success": True}
            for t in range(cfg.num_turns)
        ]
        return {"requests": rows, "mean_ttft_ms": 10.0}

    monkeypatch.setenv("IE_RUNS_DIR", str(tmp_path))
    monkeypatch.setattr(ps, "launch", fake_launch)
    monkeypatch.setattr(ps.bench, "main", fake_bench)
    monkeypatch.setattr(ps.server_metrics, "scrape", lambda url: {})
    counters = lambda before, after: {"prefix_cache_hit_rate": 0.5}  # noqa: E731
    monkeypatch.setattr(ps.server_metrics, "cell_counters", counters)
    monkeypatch.setattr(ps, "servers_at_once", lambda _gib, most=3: 2)
    res = ps.main(ps.PrefixStudyConfig(model="/m", num_runs=2))
    assert sent == ["http://on", "http://off"] * 2  # alternating, not one server then the other
    # both spawned before either is waited for (start-ups side by side), both stopped
    assert events[:4] == [("spawn", "on"), ("spawn", "off"), ("wait", "on"), ("wait", "off")]
    assert {("stop", "on"), ("stop", "off")} <= set(events)
    assert res["checks"] == {"hit_rate_on_positive": True, "later_turns_lower": True}
    assert res["last_turn_ttft_ms"] == {"on": 10.0, "off": 40.0}
