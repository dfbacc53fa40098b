"""Week 2 harness: metric math on hand-made timelines, arrivals, workloads and their table, and
the bench's command line (no server needed; the client: test_week2_client.py)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest

from common.procs import Terminated, sigterm_as_interrupt
from week2_serving.harness import bench
from week2_serving.harness.bench import BenchConfig, arrival_intervals, parse_goodput
from week2_serving.harness.client import Request
from week2_serving.harness.metrics import RequestRecord, compute_metrics
from week2_serving.harness.workloads import (
    WORKLOADS,
    Workload,
    file_requests,
    random_requests,
    shared_prefix_requests,
)

DATA = Path(__file__).parent / "data"


def rec(ttft, itl, out_tokens, prompt_len=10, start=0.0, success=True):
    return RequestRecord(
        prompt_len=prompt_len,
        start_time=start,
        ttft=ttft,
        itl=list(itl),
        latency=ttft + sum(itl),
        output_tokens=out_tokens,
        success=success,
    )


def test_metrics_on_a_hand_computed_timeline():
    # A: first chunk at 100 ms, then 3 chunks 20 ms apart -> latency 160 ms, 4 tokens, TPOT 20 ms
    # B: first chunk at 300 ms, then 1 chunk after 50 ms  -> latency 350 ms, 2 tokens, TPOT 50 ms
    # C: one token only at 200 ms: no TPOT; D: failed
    records = [
        rec(0.1, [0.02] * 3, 4, prompt_len=8),
        rec(0.3, [0.05], 2, prompt_len=12),
        rec(0.2, [], 1, prompt_len=5),
        RequestRecord(prompt_len=99, error="HTTP 500"),
    ]
    m = compute_metrics(records, duration_s=2.0, percentiles=(50, 99))
    assert (m["completed"], m["failed"]) == (3, 1)
    assert m["total_input_tokens"] == 25 and m["total_output_tokens"] == 7
    assert m["request_throughput"] == pytest.approx(1.5)
    assert m["output_throughput"] == pytest.approx(3.5)
    assert m["total_token_throughput"] == pytest.approx(16.0)
    assert m["mean_ttft_ms"] == pytest.approx(200.0)
    assert m["median_ttft_ms"] == pytest.approx(200.0)
    assert m["mean_tpot_ms"] == pytest.approx(35.0)  # (20 + 50) / 2; C has no TPOT
    assert m["mean_itl_ms"] == pytest.approx((3 * 20 + 50) / 4)
    assert m["median_itl_ms"] == pytest.approx(20.0)
    assert m["mean_e2el_ms"] == pytest.approx((160 + 350 + 200) / 3)
    assert m["p99_ttft_ms"] == pytest.approx(200 + 0.98 * 100)  # linear interpolation 200..300
    assert m["request_goodput"] is None


def test_goodput_counts_requests_meeting_every_slo():
    records = [rec(0.1, [0.02] * 3, 4), rec(0.3, [0.05], 2), rec(0.2, [], 1)]
    m = compute_metrics(records, 1.0, slo_ms={"ttft": 250, "tpot": 30})
    assert m["request_goodput"] == pytest.approx(2.0)  # B misses both; C's TPOT counts as 0
    assert compute_metrics(records, 1.0, slo_ms={"e2el": 170})["request_goodput"] == pytest.approx(
        1.0
    )
    with pytest.raises(ValueError, match="latency"):
        compute_metrics(records, 1.0, slo_ms={"latency": 1})
    assert parse_goodput(["ttft:200", "tpot:20"]) == {"ttft": 200.0, "tpot": 20.0}


def test_all_failed_gives_zeros_not_a_crash():
    m = compute_metrics([RequestRecord(prompt_len=3, error="boom")] * 2, 1.0)
    assert m["completed"] == 0 and m["failed"] == 2 and m["mean_ttft_ms"] == 0.0


@pytest.mark.parametrize("rate,b", [(4.0, 1.0), (10.0, 0.5), (2.0, 3.0)])
def test_arrivals_have_the_right_mean_and_variance(rate, b):
    x = arrival_intervals(40_000, rate, b, seed=1)
    assert x.mean() == pytest.approx(1 / rate, rel=0.03)
    assert x.var() == pytest.approx(1 / (rate**2 * b), rel=0.06)
    assert np.all(arrival_intervals(5, math.inf, 1.0) == 0)


def test_config_validation():
    with pytest.raises(ValueError, match="backend='grpc'"):
        BenchConfig(backend="grpc")
    with pytest.raises(ValueError, match="request_rate=0"):
        BenchConfig(request_rate=0)
    with pytest.raises(ValueError, match="needs --dataset-path"):
        BenchConfig(dataset_name="file")


class FakeTokenizer:
    """Whitespace tokenizer with a 100-word vocabulary and two special ids."""

    all_special_ids = [0, 1]

    def __len__(self):
        return 100

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [hash(w) % 98 + 2 for w in text.split()]}

    def decode(self, ids):
        return " ".join(f"w{i}" for i in ids)


def test_random_workload_is_token_exact_and_seeded():
    tok = FakeTokenizer()
    a = random_requests(tok, 50, input_len=40, output_len=20, range_ratio=0.5, seed=3)
    assert all(len(r.prompt) == r.prompt_len and 20 <= r.prompt_len <= 60 for r in a)
    assert all(10 <= r.output_len <= 30 for r in a)
    assert not any(t in (0, 1) for r in a for t in r.prompt)  # no special tokens
    assert [r.prompt for r in a] == [
        r.prompt for r in random_requests(tok, 50, 40, 20, 0.5, seed=3)
    ]


def test_exponential_output_lengths_have_the_mean_and_a_capped_long_tail():
    reqs = random_requests(FakeTokenizer(), 4000, 16, 128, seed=1, output_dist="exponential")
    outs = np.array([r.output_len for r in reqs])
    assert outs.min() >= 1 and outs.max() <= 6 * 128
    assert abs(outs.mean() - 128) < 8  # the cap trims the mean by 128 * e^-6, under 1%
    assert np.median(outs) < 0.8 * outs.mean()  # long-tailed: most requests are short
    assert (outs > 3 * 128).mean() > 0.03  # ... and a few are many times longer
    with pytest.raises(ValueError, match="output_dist='zipf'"):
        random_requests(FakeTokenizer(), 4, 16, 128, output_dist="zipf")


def test_shared_prefix_workload():
    reqs = shared_prefix_requests(
        FakeTokenizer(), 8, num_prefixes=2, prefix_len=30, suffix_len=5, output_len=4
    )
    assert reqs[0].prompt[:30] == reqs[2].prompt[:30] != reqs[1].prompt[:30]
    assert reqs[0].prompt[30:] != reqs[2].prompt[30:] and all(r.prompt_len == 35 for r in reqs)


def test_file_workloads(tmp_path):
    (tmp_path / "a.jsonl").write_text(
        '{"prompt": "one two three", "output_len": 7}\n\n{"prompt": "four"}\n'
    )
    reqs = file_requests(tmp_path / "a.jsonl", FakeTokenizer(), default_output_len=9)
    assert [(r.prompt_len, r.output_len) for r in reqs] == [(3, 7), (1, 9)]
    share = [
        {
            "conversations": [
                {"from": "human", "value": "hi there"},
                {"from": "gpt", "value": "a b c d"},
            ]
        },
        {"conversations": [{"from": "human", "value": "alone"}]},
    ]
    (tmp_path / "s.json").write_text(json.dumps(share))
    reqs = file_requests(tmp_path / "s.json", FakeTokenizer())
    assert [(r.prompt, r.prompt_len, r.output_len) for r in reqs] == [("hi there", 2, 4)]
    (tmp_path / "bad.jsonl").write_text('{"prompt": "x"}\n{oops\n')
    with pytest.raises(ValueError, match="bad.jsonl:2 is not valid JSON"):
        file_requests(tmp_path / "bad.jsonl", FakeTokenizer())
    (tmp_path / "nofield.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="neither 'prompt' nor 'conversations'"):
        file_requests(tmp_path / "nofield.jsonl", FakeTokenizer())


# --- the command line and the workload table ----------------------------------------------------
def test_bench_flags_come_from_the_dataclass_with_vllms_names():
    assert bench.parse_args([]) == BenchConfig()  # every default written once, in BenchConfig
    cfg = bench.parse_args(
        ["--base-url", "http://h:1", "--num-prompts", "8", "--random-input-len", "16"]
        + ["--max-concurrency", "4", "--request-rate", "2.5", "--dataset-name", "shared-prefix"]
        + ["--no-ignore-eos", "--goodput", "ttft:200", "tpot:20", "--metric-percentiles", "50,95"]
        + ["--request-timeout", "30"]
    )
    assert (cfg.base_url, cfg.num_prompts, cfg.random_input_len) == ("http://h:1", 8, 16)
    assert (cfg.max_concurrency, cfg.request_rate, cfg.dataset_name) == (4, 2.5, "shared-prefix")
    assert cfg.ignore_eos is False and cfg.goodput == {"ttft": 200.0, "tpot": 20.0}
    assert cfg.percentiles == (50.0, 95.0) and cfg.request_timeout_s == 30.0
    text = bench.bench_parser().format_help()
    assert "requests in the run (default: 64)" in text and "(default: 300)" in text


def test_bad_flags_are_usage_errors(capsys):
    for argv, message in [
        (["--goodput", "latency:5"], "use ttft:MS, tpot:MS or e2el:MS"),
        (["--metric-percentiles", "p99"], "comma-separated numbers"),
        (["--dataset-name", "file"], "needs --dataset-path"),
        (["--num-prompts", "0"], "num_prompts=0"),
    ]:
        with pytest.raises(SystemExit) as e:
            bench.parse_args(argv)
        assert e.value.code == 2 and message in capsys.readouterr().err


def test_workloads_are_one_table(monkeypatch):
    choices = next(a.choices for a in bench.bench_parser()._actions if a.dest == "dataset_name")
    assert choices == list(WORKLOADS)
    with pytest.raises(ValueError, match="use one of random, file, shared-prefix"):
        BenchConfig(dataset_name="zipf")
    tok = FakeTokenizer()
    for name in ("random", "shared-prefix"):  # every entry builds from a BenchConfig
        reqs = bench.build_requests(BenchConfig(dataset_name=name, num_prompts=3), tok)
        assert len(reqs) == 3 and all(r.prompt_len == len(r.prompt) for r in reqs)

    def constant(cfg, tokenizer):
        return [Request(prompt=[5] * 4, prompt_len=4, output_len=2)] * cfg.num_prompts

    monkeypatch.setitem(WORKLOADS, "constant", Workload(constant, (), "four tokens"))
    cfg = BenchConfig(dataset_name="constant", num_prompts=2)  # one entry is all it takes
    assert [r.prompt for r in bench.build_requests(cfg, tok)] == [[5] * 4] * 2
    assert "constant: four tokens" in bench.bench_parser().format_help()


# --- an interrupted run keeps what it measured ---------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_saves_what_it_measured(sig, runs_dir, monkeypatch):
    calls = []

    async def fake_send(session, base_url, backend, model, req, count_tokens, api_key):
        calls.append(req)
        if len(calls) == 4:  # three requests done, the fourth in flight: the signal comes
            os.kill(os.getpid(), sig)
            await asyncio.sleep(30)
        return RequestRecord(
            prompt_len=req.prompt_len,
            ttft=0.01,
            latency=0.02,
            output_tokens=2,
            itl=[0.01],
            success=True,
        )

    monkeypatch.setattr(bench, "send_request", fake_send)
    monkeypatch.setattr(bench, "load_tokenizer", lambda *a: FakeTokenizer())
    cfg = BenchConfig(
        base_url="http://127.0.0.1:1",
        model="m",
        tokenizer="t",
        num_prompts=10,
        max_concurrency=1,
        num_warmups=0,
        run_name="cut",
    )
    with sigterm_as_interrupt(), pytest.raises(KeyboardInterrupt) as e:
        bench.main(cfg)
    assert isinstance(e.value, Terminated) == (sig == signal.SIGTERM)
    res = json.loads((runs_dir / "week2" / "cut" / "results.json").read_text())
    assert res["interrupted"] == sig.name and res["unfinished"] == 7
    assert res["completed"] == 3 and len(res["requests"]) == 3 and res["duration"] > 0
