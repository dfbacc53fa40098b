"""Week 2b: the engine benchmark's arithmetic and its portfolio section (no servers)."""

from __future__ import annotations

from common.results import write_json_atomic
from week2_serving import portfolio
from week2_serving.engine import bench as engine_bench


def cell(thr: float, ttft: float = 100.0, failed: int = 0) -> dict:
    return {
        "output_throughput": thr,
        "mean_ttft_ms": ttft,
        "p99_ttft_ms": ttft * 2,
        "mean_tpot_ms": 10.0,
        "completed": 10 - failed,
        "failed": failed,
    }


CELLS = {
    ("vllm", "c1"): cell(200),
    ("vllm", "c8"): cell(1000),
    ("vllm", "c32"): cell(2000),
    ("continuous", "c1"): cell(150),
    ("continuous", "c8"): cell(900),
    ("continuous", "c32"): cell(1600),
    ("continuous", "mixed-c32"): cell(1500),
    ("static", "mixed-c32"): cell(750),
    ("sequential", "c32"): cell(160, failed=1),
    ("continuous", "shared-prefix-c8"): cell(500, ttft=30),
    ("no-prefix-caching", "shared-prefix-c8"): cell(400, ttft=120),
}


def test_summary_ratios():
    s = engine_bench.summarize(CELLS)
    assert s["continuous_vs_sequential_c32"] == 10.0
    assert s["continuous_vs_static_mixed_c32"] == 2.0
    assert s["ours_vs_vllm"]["c32"] == 0.8 and s["ours_vs_vllm"]["c1"] == 0.75
    assert s["ours_vs_vllm"]["mixed-c32"] is None  # no vLLM cell: no ratio, no crash
    assert s["prefix_caching_ttft_cut"] == 0.75
    assert s["failed_requests"] == 1


def test_engine_section_in_the_portfolio(runs_dir):
    summary = engine_bench.summarize(CELLS)
    memory = {"utilization_paged": 0.93, "utilization_naive_max_len": 0.09}
    write_json_atomic(
        runs_dir / "week2" / "engine" / "results.json", {"summary": summary, "memory": memory}
    )
    text = portfolio.engine_section(runs_dir / "week2", runs_dir / "report")
    assert "10.00x" in text and "0.80x" in text and "-75% (120 -> 30 ms)" in text
    assert "93% vs 9%" in text
    assert portfolio.engine_section(runs_dir / "nothing", runs_dir / "report") is None


def test_memory_trace_paged_beats_reservation(tiny_gpt):
    trace, mem = engine_bench.memory_trace(str(tiny_gpt["hf_dir"]), num_requests=6)
    assert len(trace["filled"]) == mem["steps"] > 0
    for f, paged, naive in zip(trace["filled"], trace["paged_reserved"], trace["naive_max_len"]):
        assert f <= paged <= naive  # never less than what is filled, never more than naive
    assert mem["utilization_paged"] > mem["utilization_naive_max_len"]
