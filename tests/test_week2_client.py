"""The client on recorded response streams and on malformed ones, replayed by a local aiohttp
server: whatever the server sends (or fails to), `send_request` returns a record, never raises."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from common.server import free_port
from week2_serving.harness.client import Request, StreamParser, build_payload, send_request

DATA = Path(__file__).parent / "data"


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


# --- malformed shapes: each is a failed record with its error text, never an exception ----------
def sse(*events: object) -> bytes:
    return b"".join(f"data: {json.dumps(e)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


@pytest.mark.parametrize(
    "backend,body,error",
    [
        ("openai", sse([1, 2]), "not a JSON object"),
        ("openai", sse("just a string"), "not a JSON object"),
        ("openai", sse({"choices": "oops"}), "'choices' is not a list"),
        ("openai", sse({"choices": [7]}), "a choice that is not an object"),
        ("openai", sse({"choices": [{"text": 5}]}), "not a string"),
        ("openai", sse({"choices": [], "usage": 3}), "'usage' is not an object"),
        ("openai-chat", sse({"choices": [{"delta": "x"}]}), "'delta' is not an object"),
        ("sglang", sse({"text": None}), "not a string"),
        ("sglang", sse({"text": "hi", "meta_info": [1]}), "'meta_info' is not an object"),
        ("openai", sse({"id": "x"}, {"id": "y"}), "without any content"),  # no `choices` at all
        ("openai", b"<html><body>502 Bad Gateway</body></html>", "JSONDecodeError"),
        ("openai", b"data: \xff\xfe\n\n", "UnicodeDecodeError"),
    ],
)
def test_malformed_events_are_failed_records(backend, body, error):
    r, _ = run_client(body, backend)
    assert not r.success and error in r.error, r.error
    assert r.output_tokens == 0 and r.start_time > 0  # what was measured is still there


def run_handler(handler, count_tokens=None):
    """Stream one request from a local server whose behaviour `handler` decides."""

    async def go():
        app = web.Application()
        app.router.add_post("/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        try:
            async with aiohttp.ClientSession() as session:
                req = Request(prompt="hi", prompt_len=2, output_len=8)
                return await send_request(session, url, "openai", "m", req, count_tokens)
        finally:
            await runner.cleanup()

    return asyncio.run(go())


async def dies_mid_stream(request: web.Request) -> web.StreamResponse:
    """Two events, then the connection drops without the stream's end (a crashed server)."""
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    await resp.write(sse({"choices": [{"text": "a"}]})[: -len(b"data: [DONE]\n\n")])
    await resp.write(b'data: {"choices": [{"text": "b"}]}\n\n')
    request.transport.close()
    return resp


async def resets_the_connection(request: web.Request) -> web.StreamResponse:
    """Closes with a TCP reset (SO_LINGER 0) before any response."""
    sock = request.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    request.transport.close()
    await asyncio.sleep(0.1)
    return web.Response(text="never sent")


@pytest.mark.parametrize("handler", [dies_mid_stream, resets_the_connection])
def test_a_server_that_drops_the_connection_gives_a_failed_record(handler):
    r = run_handler(handler)
    assert not r.success and r.error, r.error
    assert any(
        name in r.error
        for name in ("ClientPayloadError", "ServerDisconnectedError", "ClientOSError")
    ), r.error


def test_a_token_counter_that_raises_is_recorded():
    def broken(text):
        raise KeyError("tokenizer")

    async def ok(request):
        return web.Response(
            body=sse({"choices": [{"text": "a"}]}), content_type="text/event-stream"
        )

    r = run_handler(ok, count_tokens=broken)
    assert not r.success and "KeyError" in r.error
