"""The harness against real vLLM (CPU build): a clean run and the validation against vllm bench."""

from __future__ import annotations

import pytest

from common.results import read_json
from common.server import vllm_available
from week2_serving.harness import bench

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(
        not vllm_available(), reason="vLLM venv .venvs/vllm is absent (make setup-vllm)"
    ),
]


def test_harness_run_against_vllm(vllm_tiny, tiny_gpt, runs_dir):
    cfg = bench.BenchConfig(
        base_url=vllm_tiny.url,
        num_prompts=16,
        random_input_len=16,
        random_output_len=12,
        max_concurrency=4,
        goodput={"ttft": 60_000},
        run_name="it",
    )
    res = bench.main(cfg)
    assert (res["completed"], res["failed"]) == (16, 0)
    assert res["model_id"] == "tiny" and res["tokenizer_id"] == str(tiny_gpt["hf_dir"])
    assert res["total_output_tokens"] == 16 * 12  # ignore_eos: exactly max_tokens each
    assert res["total_input_tokens"] == 16 * 16  # token-exact prompts
    assert 0 < res["mean_ttft_ms"] < res["mean_e2el_ms"]
    assert res["mean_tpot_ms"] > 0 and res["request_goodput"] == pytest.approx(
        res["request_throughput"]
    )
    saved = read_json(runs_dir / "week2" / "it" / "results.json")
    for key in (
        "mean_ttft_ms",
        "p99_itl_ms",
        "output_throughput",
        "median_tpot_ms",
        "request_throughput",
    ):
        assert key in saved
    assert len(saved["requests"]) == 16 and saved["environment"]["torch"]

    chat = bench.main(
        bench.BenchConfig(
            base_url=vllm_tiny.url,
            backend="openai-chat",
            num_prompts=4,
            random_input_len=8,
            random_output_len=6,
            save=False,
        )
    )
    assert chat["completed"] == 4 and chat["total_output_tokens"] == 24


def test_validation_runs_both_tools_on_the_same_prompts(vllm_tiny, tiny_gpt, tmp_path):
    """The validation's machinery on a small load: vllm bench (the installed version accepts our
    flags) and our harness read one prompt file and each completes every request."""
    from week2_serving.harness import validate

    cfg = validate.ValidateConfig(
        num_prompts=8, input_len=8, output_len=8, max_concurrency=4, range_ratio=0.0
    )
    cfg.rounds = 1
    rows = validate.run_rounds(vllm_tiny.url, "tiny", str(tiny_gpt["hf_dir"]), cfg, tmp_path)
    (row,) = rows
    assert row["vllm"]["completed"] == row["ours"]["completed"] == 8 and row["ours"]["failed"] == 0
    for tool in ("vllm", "ours"):
        assert all(row[tool][k] > 0 for k in validate.COMPARED)
    prompts = (tmp_path / "prompts-round0.jsonl").read_text().splitlines()
    assert len(prompts) == 8 and all('"output_tokens": 8' in p for p in prompts)
    summary = validate.summarize(rows, 0.10)
    assert set(summary) == set(validate.COMPARED)


def test_validation_paces_both_tools_alike(vllm_tiny, tiny_gpt, tmp_path):
    """With a request rate both tools space their arrivals by it: 8 requests at 4/s take at
    least 7/4 s in each tool, where sent at once the tiny model answers them in a fraction of
    that; the saturated rate measured first is a positive number of requests/s."""
    from week2_serving.harness import validate

    cfg = validate.ValidateConfig(
        num_prompts=8, input_len=8, output_len=8, max_concurrency=4, range_ratio=0.0
    )
    cfg.rounds = 1
    folder = str(tiny_gpt["hf_dir"])
    saturated = validate.saturated_rate(vllm_tiny.url, "tiny", folder, cfg, tmp_path)
    assert saturated > 4
    (row,) = validate.run_rounds(vllm_tiny.url, "tiny", folder, cfg, tmp_path, rate=4.0)
    slowest = 8 * 8 / (7 / 4)  # output tok/s if the run lasted exactly the arrivals' span
    for tool in ("vllm", "ours"):
        assert row[tool]["completed"] == 8
        assert 0 < row[tool]["output_throughput"] <= slowest * 1.02, (tool, row[tool])
