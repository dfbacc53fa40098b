"""The harness against real vLLM (CPU build): a clean run, and a server that dies mid-run."""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest

from common.results import read_json
from common.server import _group_alive, free_port, vllm_available, vllm_server
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


def test_server_killed_mid_run_is_recorded_and_leaves_nothing_behind(
    tiny_gpt, tmp_path, runs_dir, monkeypatch
):
    srv = vllm_server(
        tiny_gpt["hf_dir"], free_port(), tmp_path / "vllm.log", max_model_len=128
    ).start()
    pgid = os.getpgid(srv.proc.pid)
    family = [srv.proc.pid] + [c.pid for c in psutil.Process(srv.proc.pid).children(recursive=True)]
    assert len(family) > 1  # vLLM runs its engine in child processes
    cfg = bench.BenchConfig(
        base_url=srv.url,
        num_prompts=48,
        random_input_len=16,
        random_output_len=100,
        max_concurrency=4,
        request_timeout_s=30,
        num_warmups=1,
        run_name="killed",
    )
    # Kill the server (no grace: like a crash) as soon as 5 requests of the run have completed.
    real_send, finished, killed = bench.send_request, [], threading.Event()

    async def send_then_maybe_kill(*args, **kwargs):
        rec = await real_send(*args, **kwargs)
        finished.append(rec)
        if len(finished) == 1 + 5 and not killed.is_set():  # 1 warmup + 5 measured
            killed.set()
            threading.Thread(target=srv.stop, kwargs={"grace_s": 0.0}).start()
        return rec

    monkeypatch.setattr(bench, "send_request", send_then_maybe_kill)
    try:
        res = bench.main(cfg)
    finally:
        srv.stop()
    assert killed.is_set()
    assert res["completed"] >= 5 and res["failed"] > 0 and res["completed"] + res["failed"] == 48
    assert res["errors"] and all(e for e in res["errors"])
    assert read_json(runs_dir / "week2" / "killed" / "results.json")["failed"] == res["failed"]
    time.sleep(0.5)
    assert not _group_alive(pgid)
    alive = [
        pid for pid in family if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"
    ]
    assert alive == []


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
