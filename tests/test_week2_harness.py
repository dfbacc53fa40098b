"""Week 2 harness: metric math on hand-made timelines, arrivals, workloads, and the client on
recorded response streams (no server needed)."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web

from common.server import free_port
from week2_serving.harness.bench import BenchConfig, arrival_intervals, parse_goodput
from week2_serving.harness.client import Request, StreamParser, build_payload, send_request
from week2_serving.harness.metrics import RequestRecord, compute_metrics
from week2_serving.harness.workloads import file_requests, random_requests, shared_prefix_requests

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


# --- the client on recorded streams, replayed by a local aiohttp server -------------------------------
def run_client(
    body: bytes | Path, backend: str, prompt="hello", status=200, count_tokens=None, port=None
):
    """Serve `body` (an SSE recording) from a throwaway local server and stream it with our client."""
    body = body.read_bytes() if isinstance(body, Path) else body
    seen: dict = {}

    async def handler(request: web.Request) -> web.StreamResponse:
        seen["path"], seen["payload"] = request.path, await request.json()
        if status != 200:
            return web.Response(status=status, body=body, content_type="application/json")
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for event in body.split(b"\n\n"):  # one write per event, as a server streams them
            if event.strip():
                await resp.write(event + b"\n\n")
        await resp.write_eof()
        return resp

    async def go():
        runner = None
        if port is None:
            app = web.Application()
            app.router.add_post("/{tail:.*}", handler)
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        else:
            url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as session:
                return await send_request(
                    session,
                    url,
                    backend,
                    "m",
                    Request(prompt=prompt, prompt_len=5, output_len=8),
                    count_tokens,
                )
        finally:
            if runner is not None:
                await runner.cleanup()

    return asyncio.run(go()), seen


def test_openai_completions_stream_recorded_from_vllm():
    r, seen = run_client(DATA / "vllm_completions_stream.txt", "openai", prompt=[5, 6, 7])
    assert r.success, r.error
    events = [
        json.loads(line[6:])
        for line in (DATA / "vllm_completions_stream.txt").read_text().splitlines()
        if line.startswith("data: {")
    ]
    text = "".join(e["choices"][0]["text"] for e in events if e.get("choices"))
    usage = [e["usage"] for e in events if e.get("usage")][-1]
    assert r.generated_text == text
    assert r.output_tokens == usage["completion_tokens"] and r.prompt_len == usage["prompt_tokens"]
    assert len(r.itl) == sum(1 for e in events if e.get("choices")) - 1
    assert seen["path"] == "/v1/completions" and seen["payload"]["prompt"] == [5, 6, 7]
    assert seen["payload"]["stream_options"] == {"include_usage": True}


def test_openai_chat_stream_recorded_from_vllm():
    r, seen = run_client(DATA / "vllm_chat_stream.txt", "openai-chat")
    assert r.success, r.error
    assert r.generated_text and r.output_tokens > 0
    assert seen["path"] == "/v1/chat/completions"
    assert seen["payload"]["messages"] == [{"role": "user", "content": "hello"}]


def test_sglang_native_stream_cumulative_text():
    # SGLang's /generate streams the whole text so far in each event (its documented format).
    r, seen = run_client(DATA / "sglang_generate_stream.txt", "sglang", prompt=[1, 2, 3])
    assert r.success, r.error
    assert r.generated_text == "Hello, world! How are you"
    assert r.output_tokens == 6 and len(r.itl) == 3
    assert seen["path"] == "/generate" and seen["payload"]["input_ids"] == [1, 2, 3]
    assert seen["payload"]["sampling_params"]["max_new_tokens"] == 8


def test_sglang_payload_for_text_and_openai_for_ids():
    p = build_payload(
        "sglang", "m", Request(prompt="hi", prompt_len=1, output_len=4, ignore_eos=False)
    )
    assert p["text"] == "hi" and p["sampling_params"]["ignore_eos"] is False
    with pytest.raises(ValueError, match="chat API takes text"):
        build_payload("openai-chat", "m", Request(prompt=[1], prompt_len=1, output_len=1))


def test_http_error_and_broken_streams_are_recorded_not_raised():
    r, _ = run_client(
        b'{"error": {"message": "max_tokens must be at least 1"}}', "openai", status=400
    )
    assert not r.success and r.error.startswith("HTTP 400") and "max_tokens" in r.error
    r, _ = run_client(b"data: [DONE]\n\n", "openai")
    assert not r.success and "without any content" in r.error
    assert "JSONDecodeError" in run_client(b"data: {not json\n\n", "openai")[0].error
    assert (
        "engine died"
        in run_client(b'data: {"error": {"message": "engine died"}}\n\n', "openai")[0].error
    )
    r, _ = run_client(b"", "openai", port=free_port())  # nothing listens there
    assert not r.success and "ClientConnectorError" in r.error


def test_token_count_falls_back_to_the_tokenizer():
    events = [{"choices": [{"text": " a b"}]}, {"choices": [{"text": " c"}]}]
    body = "".join(f"data: {json.dumps(x)}\n\n" for x in events) + "data: [DONE]\n\n"
    r, _ = run_client(body.encode(), "openai", count_tokens=lambda s: len(s.split()))
    assert r.output_tokens == 3 and r.generated_text == " a b c"


def test_stream_parser_ignores_usage_only_events():
    p = StreamParser("openai")
    assert p.feed({"choices": [], "usage": {"completion_tokens": 4, "prompt_tokens": 2}}) == (
        False,
        "",
        4,
    )
    assert p.prompt_tokens == 2
