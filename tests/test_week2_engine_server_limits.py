"""Issue #11: the server refuses what it cannot take (413, 415, 429, 4xx on malformed input),
gives up on what takes too long (504) and drops what nobody waits for (client disconnects)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from urllib.parse import urlparse

import httpx
import pytest

from tests.engine_server_helpers import (
    engine_idle,
    long_context_copy,
    running_server,
    tiny_engine,
    wait_until,
)
from week2_serving.engine.guards import ServingLimits


@pytest.fixture(scope="module")
def long_model(tiny_gpt, tmp_path_factory):
    return long_context_copy(tiny_gpt["hf_dir"], tmp_path_factory.mktemp("long") / "hf")


async def give_up_after(port: int, body: dict, seconds: float) -> bytes:
    """Send a request, wait `seconds` for any answer, then close the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    writer.write(head.encode() + data)
    await writer.drain()
    try:
        got = await asyncio.wait_for(reader.read(1), seconds)
    except TimeoutError:
        got = b""
    writer.close()
    return got


def test_200_clients_that_give_up_are_aborted_within_a_second(long_model):
    engine = tiny_engine(long_model, num_blocks=1024, max_num_seqs=64)
    body = {"model": "tiny", "prompt": "The list", "max_tokens": 512, "ignore_eos": True}
    with running_server(engine) as (url, _):
        port = urlparse(url).port

        async def clients():
            return await asyncio.gather(*(give_up_after(port, body, 0.5) for _ in range(200)))

        answers = asyncio.run(clients())
        assert answers == [b""] * 200  # nobody got an answer: all were still generating
        took = wait_until(lambda: engine.num_aborted == 200 and engine_idle(engine), 5, "aborts")
        assert took <= 1.0, f"the aborts took {took:.2f} s after the last disconnect"
        assert engine.num_finished == 0 and not engine.requests
        assert engine.block_manager.num_used_blocks == 0
        assert httpx.get(url + "/health").status_code == 200


def test_request_timeout_gives_504_and_frees_the_request(long_model):
    engine = tiny_engine(long_model, num_blocks=256)
    limits = ServingLimits(request_timeout=0.3)
    body = {"model": "tiny", "prompt": "The", "max_tokens": 900, "ignore_eos": True}
    with running_server(engine, limits) as (url, _):
        r = httpx.post(url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 504, r.text
        assert "--request-timeout" in r.json()["error"]["message"]
        with httpx.stream("POST", url + "/v1/completions", json={**body, "stream": True}) as r:
            events = [line for line in r.iter_lines() if line.startswith("data:")]
        assert r.status_code == 200 and events[-1] != "data: [DONE]"
        assert json.loads(events[-1][5:])["error"]["code"] == 504
        wait_until(lambda: engine_idle(engine), 5, "the timed-out requests to be freed")
        assert engine.num_aborted == 2


def test_full_queue_answers_429_with_retry_after(tiny_gpt):
    engine = tiny_engine(tiny_gpt["hf_dir"])
    body = {"model": "tiny", "prompt": "The", "max_tokens": 4}
    with running_server(engine, ServingLimits(max_num_waiting=1)) as (url, app):
        aeng, gate, held = app.state.engine, threading.Event(), threading.Event()

        def hold() -> None:
            held.set()
            gate.wait()

        asyncio.run_coroutine_threadsafe(aeng.call(hold), aeng.loop)  # hold the engine
        # an empty inbox is no proof: the call may not have been put there yet
        wait_until(held.is_set, 5, "the engine thread to take the call")
        first: list[httpx.Response] = []
        sender = threading.Thread(
            target=lambda: first.append(httpx.post(url + "/v1/completions", json=body, timeout=30))
        )
        sender.start()
        wait_until(lambda: aeng.inbox.qsize() == 1, 5, "the first request to be queued")
        r = httpx.post(url + "/v1/completions", json=body, timeout=30)
        assert r.status_code == 429 and r.headers["retry-after"] == "1"
        assert "--max-num-waiting 1" in r.json()["error"]["message"]
        gate.set()
        sender.join(timeout=30)
        assert first[0].status_code == 200  # the one already queued was served
        assert httpx.post(url + "/v1/completions", json=body).status_code == 200


def chunks(total: int, size: int = 1000):
    yield b'{"model": "tiny", "prompt": "'
    for _ in range(total // size):
        yield b"x" * size
    yield b'"}'


@pytest.mark.parametrize(
    "send,status,fragment",
    [
        (dict(content=b"x" * 5000, headers={"content-type": "application/json"}), 413, "5000"),
        (dict(content=chunks(5000), headers={"content-type": "application/json"}), 413, "2000"),
        (dict(content=b'{"model": "tiny"}', headers={"content-type": "text/plain"}), 415, "text"),
        (dict(content=b'{"model": "tiny", "prompt": "hi", '), 400, "not valid JSON"),
        (dict(json=[{"model": "tiny", "prompt": "hi"}]), 400, "dictionary"),
        (dict(json="just a string"), 400, "dictionary"),
    ],
)
def test_malformed_posts_get_4xx_and_the_server_goes_on(tiny_gpt, send, status, fragment):
    engine = tiny_engine(tiny_gpt["hf_dir"])
    headers = send.pop("headers", {"content-type": "application/json"})
    with running_server(engine, ServingLimits(max_body_bytes=2000)) as (url, _):
        r = httpx.post(url + "/v1/completions", headers=headers, timeout=30, **send)
        assert r.status_code == status, r.text
        err = r.json()["error"]
        assert fragment in err["message"] and err["code"] == status and err["type"]
        ok = {"model": "tiny", "prompt": "The", "max_tokens": 2}
        assert httpx.post(url + "/v1/completions", json=ok).status_code == 200
        assert not engine.requests


def test_unknown_routes_and_methods_get_openai_errors(tiny_gpt):
    engine = tiny_engine(tiny_gpt["hf_dir"])
    with running_server(engine) as (url, _):
        r = httpx.get(url + "/v1/nothing")
        assert r.status_code == 404 and "/v1/nothing" in r.json()["error"]["message"]
        r = httpx.get(url + "/v1/completions")
        assert r.status_code == 405 and r.json()["error"]["type"] == "MethodNotAllowedError"
        assert httpx.get(url + "/health").status_code == 200


def test_tokenization_runs_off_the_event_loop(tiny_gpt):
    """A slow tokenizer call holds its own request only: /health still answers at once."""
    engine = tiny_engine(tiny_gpt["hf_dir"])
    encode, threads = engine.tokenizer.encode, []

    def slow_encode(text, *a, **kw):
        threads.append(threading.current_thread().name)
        if text == "slow":
            time.sleep(1.5)
        return encode(text, *a, **kw)

    engine.tokenizer.encode = slow_encode
    body = {"model": "tiny", "prompt": "slow", "max_tokens": 2}
    with running_server(engine) as (url, _):
        sender = threading.Thread(target=lambda: httpx.post(url + "/v1/completions", json=body))
        sender.start()
        wait_until(lambda: threads, 5, "the tokenizer to be called")
        start = time.monotonic()
        assert httpx.get(url + "/health").status_code == 200
        assert time.monotonic() - start < 0.5  # not stuck behind the 1.5 s tokenization
        sender.join(timeout=30)
    assert threads and all(t.startswith("tokenizer") for t in threads), threads


def test_too_long_prompt_is_refused_by_token_count_before_queueing(tiny_gpt):
    engine = tiny_engine(tiny_gpt["hf_dir"])
    with running_server(engine) as (url, app):
        body = {"model": "tiny", "prompt": "word " * 200, "max_tokens": 4}
        r = httpx.post(url + "/v1/completions", json=body)
        assert r.status_code == 400 and "the prompt has" in r.json()["error"]["message"]
        assert engine.num_prompt_tokens == 0 and app.state.engine.inbox.qsize() == 0


def test_metrics_read_no_engine_state_on_the_event_loop(tiny_gpt):
    """/metrics renders what the engine thread recorded: it never calls into the engine."""
    engine = tiny_engine(tiny_gpt["hf_dir"])
    calls = []
    for name in ("stats", "step"):
        real = getattr(engine, name)
        setattr(
            engine,
            name,
            lambda real=real, name=name: (
                calls.append((name, threading.current_thread().name)) or real()
            ),
        )
    with running_server(engine) as (url, _):
        httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 2})
        calls.clear()
        text = httpx.get(url + "/metrics").text
    assert all(thread == "engine" for _, thread in calls), calls
    assert "vllm:kv_cache_usage_perc" in text and "vllm:generation_tokens_total" in text
