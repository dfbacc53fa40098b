"""An async streaming client for the three APIs the harness speaks.

- `openai`       POST /v1/completions       {"prompt": ..., "stream": true}  -> choices[0].text
- `openai-chat`  POST /v1/chat/completions  {"messages": [...]}              -> choices[0].delta.content
- `sglang`       POST /generate             {"text"|"input_ids", "sampling_params"} (SGLang's
                 native API; each streamed event carries the *whole* text so far)

Responses are Server-Sent Events: lines `data: {json}`, ending with `data: [DONE]`; lines
starting with ':' are keep-alive comments. `send_request` never raises: a failure (HTTP
status, timeout, reset connection, a malformed stream) is returned in the record.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp

from week2_serving.harness.metrics import RequestRecord

BACKENDS = ("openai", "openai-chat", "sglang")
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
    extra: dict = field(
        default_factory=dict
    )  # merged into the payload (e.g. {"model": "adapter-a"})


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
    """Turns one backend's events into (is_content_event, new_text, usage_output_tokens)."""

    def __init__(self, backend: str):
        self.backend = backend
        self.text = ""

    prompt_tokens: int | None = None

    def feed(self, event: dict) -> tuple[bool, str, int | None]:
        if "error" in event and not event.get("choices"):
            err = event["error"]
            raise RuntimeError(err.get("message", str(err)) if isinstance(err, dict) else str(err))
        if self.backend == "sglang":
            full = event.get("text", "")
            delta = full[len(self.text) :]
            self.text = full
            meta = event.get("meta_info") or {}
            self.prompt_tokens = meta.get("prompt_tokens", self.prompt_tokens)
            return True, delta, meta.get("completion_tokens")
        usage_block = event.get("usage") or {}
        self.prompt_tokens = usage_block.get("prompt_tokens", self.prompt_tokens)
        usage = usage_block.get("completion_tokens")
        choices = event.get("choices") or []
        if not choices:
            return False, "", usage
        if self.backend == "openai":
            delta = choices[0].get("text") or ""
        else:
            delta = (choices[0].get("delta") or {}).get("content") or ""
        self.text += delta
        return True, delta, usage


async def send_request(
    session: aiohttp.ClientSession,
    base_url: str,
    backend: str,
    model: str,
    req: Request,
    count_tokens: Callable[[str], int] | None = None,
    api_key: str | None = None,
) -> RequestRecord:
    """Stream one request; return its timeline. Never raises for server or network failures."""
    rec = RequestRecord(prompt_len=req.prompt_len, expected_output_len=req.output_len)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    parser = StreamParser(backend)
    usage_tokens: int | None = None
    st = time.perf_counter()
    rec.start_time = st
    last = st
    first = False
    try:
        payload = build_payload(backend, model, req)
        url = base_url.rstrip("/") + ENDPOINTS[backend]
        async with session.post(url, json=payload, headers=headers) as resp:
            if resp.status != 200:
                body = (await resp.read()).decode(errors="replace")[:300]
                rec.error = f"HTTP {resp.status}: {body}"
                return rec
            async for raw in resp.content:  # one SSE line at a time
                line = raw.decode().strip()
                if not line or line.startswith(":"):
                    continue
                data = line.removeprefix("data:").strip()
                if data == "[DONE]":
                    break
                is_content, _, usage = parser.feed(json.loads(data))
                if usage is not None:
                    usage_tokens = usage
                if is_content:
                    now = time.perf_counter()
                    if not first:
                        first, rec.ttft = True, now - st
                    else:
                        rec.itl.append(now - last)
                    last = now
        if not first:
            rec.error = "the stream ended without any content"
            return rec
        rec.latency = last - st
        rec.generated_text = parser.text
        if (
            parser.prompt_tokens is not None
        ):  # the server counted the prompt (chat templates add tokens)
            rec.prompt_len = parser.prompt_tokens
        if usage_tokens is not None:
            rec.output_tokens = usage_tokens
        elif count_tokens is not None:
            rec.output_tokens = count_tokens(parser.text)
        else:
            rec.output_tokens = len(rec.itl) + 1  # last resort: one token per event
        rec.success = True
    except (
        aiohttp.ClientError,
        asyncio.TimeoutError,
        json.JSONDecodeError,
        RuntimeError,
        ValueError,
        OSError,
    ) as e:
        rec.error = f"{type(e).__name__}: {e}"[:300]
    return rec
