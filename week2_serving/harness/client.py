"""An async streaming client for the three APIs the harness speaks.

- `openai`       POST /v1/completions       {"prompt": ..., "stream": true}  -> choices[0].text
- `openai-chat`  POST /v1/chat/completions  {"messages": [...]}              -> choices[0].delta.content
- `sglang`       POST /generate             {"text"|"input_ids", "sampling_params"} (SGLang's
                 native API; each streamed event carries the *whole* text so far)

Responses are Server-Sent Events: lines `data: {json}`, ending with `data: [DONE]`; lines
starting with ':' are keep-alive comments. `send_request` never raises: a failure (HTTP
status, timeout, reset connection, a server that dies mid-stream, an event of an unexpected
shape, a body that is not SSE at all) is returned in the record, with its error text, so a
benchmark keeps every request it measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, get_args

import aiohttp

from week2_serving.harness.metrics import RequestRecord

Backend = Literal["openai", "openai-chat", "sglang"]
BACKENDS: tuple[str, ...] = get_args(Backend)
ENDPOINTS = {
    "openai": "/v1/completions",
    "openai-chat": "/v1/chat/completions",
    "sglang": "/generate",
}


@dataclass
class Request:
    prompt: str | list[int]  # text, or token ids (openai completions and sglang accept ids)
    prompt_len: int  # input tokens
    output_len: int  # max_tokens
    ignore_eos: bool = True
    temperature: float = 0.0
    # merged into the payload (e.g. {"model": "adapter-a"})
    extra: dict = field(default_factory=dict)


def build_payload(backend: str, model: str, req: Request) -> dict:
    if backend in ("openai", "openai-chat"):
        payload = {
            "model": model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": req.temperature,
            "ignore_eos": req.ignore_eos,
        }
        if backend == "openai":
            payload.update(prompt=req.prompt, max_tokens=req.output_len)
        elif not isinstance(req.prompt, str):
            raise ValueError("the chat API takes text prompts, not token ids")
        else:
            payload.update(
                messages=[{"role": "user", "content": req.prompt}],
                max_completion_tokens=req.output_len,
            )
    elif backend == "sglang":
        payload = {
            "sampling_params": {
                "max_new_tokens": req.output_len,
                "temperature": req.temperature,
                "ignore_eos": req.ignore_eos,
            },
            "stream": True,
        }
        payload["text" if isinstance(req.prompt, str) else "input_ids"] = req.prompt
    else:
        raise ValueError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    payload.update(req.extra)
    return payload


class StreamParser:
    """Turns one backend's events into (is_content_event, new_text, usage_output_tokens).

    An event of a shape the backend never sends (not an object, `choices` not a list, text
    not a string) raises ValueError naming what was wrong; `send_request` records it."""

    def __init__(self, backend: str):
        self.backend = backend
        self.text = ""
        self.prompt_tokens: int | None = None

    def feed(self, event: object) -> tuple[bool, str, int | None]:
        if not isinstance(event, dict):
            raise ValueError(f"an event that is not a JSON object: {str(event)[:80]}")
        if "error" in event and not event.get("choices"):
            err = event["error"]
            raise RuntimeError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
        if self.backend == "sglang":
            return self._feed_sglang(event)
        usage_block = _mapping(event, "usage")
        self.prompt_tokens = usage_block.get("prompt_tokens", self.prompt_tokens)
        usage = usage_block.get("completion_tokens")
        choices = event.get("choices") or []
        if not isinstance(choices, list):
            raise ValueError(f"'choices' is not a list: {str(choices)[:80]}")
        if not choices:
            return False, "", usage
        if not isinstance(choices[0], dict):
            raise ValueError(f"a choice that is not an object: {str(choices[0])[:80]}")
        if self.backend == "openai":
            delta = choices[0].get("text") or ""
        else:
            delta = _mapping(choices[0], "delta").get("content") or ""
        self.text += _text(delta)
        return True, delta, usage

    def _feed_sglang(self, event: dict) -> tuple[bool, str, int | None]:
        full = _text(event.get("text", ""))  # SGLang sends the whole text so far
        delta = full[len(self.text) :]
        self.text = full
        meta = _mapping(event, "meta_info")
        self.prompt_tokens = meta.get("prompt_tokens", self.prompt_tokens)
        return True, delta, meta.get("completion_tokens")


def _mapping(event: dict, key: str) -> dict:
    value = event.get(key) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{key!r} is not an object: {str(value)[:80]}")
    return value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError(f"streamed text that is not a string: {str(value)[:80]}")
    return value


@dataclass
class _Stream:
    """What one response stream delivered, as it arrives."""

    start: float
    last: float = 0.0
    first: bool = False
    usage_tokens: int | None = None


async def _read_events(resp, parser: StreamParser, rec: RequestRecord, s: _Stream) -> None:
    """Read SSE lines until [DONE] or the end, timing every content event into `rec`."""
    async for raw in resp.content:  # one SSE line at a time
        line = raw.decode().strip()
        if not line or line.startswith(":"):
            continue
        data = line.removeprefix("data:").strip()
        if data == "[DONE]":
            break
        is_content, _, usage = parser.feed(json.loads(data))
        if usage is not None:
            s.usage_tokens = usage
        if is_content:
            now = time.perf_counter()
            if not s.first:
                s.first, rec.ttft = True, now - s.start
            else:
                rec.itl.append(now - s.last)
            s.last = now


def _finish(
    rec: RequestRecord, parser: StreamParser, s: _Stream, count_tokens: Callable | None
) -> None:
    """Fill in the record of a stream that delivered content: latency, text, token counts."""
    rec.latency = s.last - s.start
    rec.generated_text = parser.text
    if parser.prompt_tokens is not None:  # the server counted the prompt (chat templates add some)
        rec.prompt_len = parser.prompt_tokens
    if s.usage_tokens is not None:
        rec.output_tokens = s.usage_tokens
    elif count_tokens is not None:
        rec.output_tokens = count_tokens(parser.text)
    else:
        rec.output_tokens = len(rec.itl) + 1  # last resort: one token per event
    rec.success = True


async def send_request(
    session: aiohttp.ClientSession,
    base_url: str,
    backend: str,
    model: str,
    req: Request,
    count_tokens: Callable[[str], int] | None = None,
    api_key: str | None = None,
) -> RequestRecord:
    """Stream one request; return its timeline. Never raises for anything the server or the
    network does: every failure is the record's `error` (cancellation still propagates)."""
    rec = RequestRecord(prompt_len=req.prompt_len, expected_output_len=req.output_len)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    parser = StreamParser(backend)
    stream = _Stream(start=time.perf_counter())
    rec.start_time = stream.start
    try:
        payload = build_payload(backend, model, req)
        url = base_url.rstrip("/") + ENDPOINTS[backend]
        async with session.post(url, json=payload, headers=headers) as resp:
            if resp.status != 200:
                body = (await resp.read()).decode(errors="replace")[:300]
                rec.error = f"HTTP {resp.status}: {body}"
                return rec
            await _read_events(resp, parser, rec, stream)
        if not stream.first:
            rec.error = "the stream ended without any content"
            return rec
        _finish(rec, parser, stream, count_tokens)
    except Exception as e:  # whatever went wrong, the measurement is kept
        rec.error = f"{type(e).__name__}: {e}"[:300]
        rec.success = False
    return rec
