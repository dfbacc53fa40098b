"""How engine outputs become OpenAI responses: one `Choice` per sequence, then the JSON.

A request with several prompts and `n` choices runs one engine sequence per (prompt, choice);
choice `index = prompt_index * n + choice_index`, as OpenAI numbers them. Each `Choice` turns
its sequence's step outputs into text (detokenized, cut at a stop string) and logprobs:

- the token that ended the output (EOS or one of `stop_token_ids`) is counted in the usage
  but is not text and has no logprobs entry; other special tokens are not text either;
- logprobs are the model's own (before temperature and filters), -inf reported as -9999.0;
- streamed or not, the same `Choice` code produces the text, so both give the same answer.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from week1_gpt_kvcache.sampling import TokenLogprobs
from week2_serving.engine.detokenizer import StopStrings
from week2_serving.engine.fast_detokenizer import make_detokenizer
from week2_serving.engine.llm_engine import StepOutput

LOGPROB_FLOOR = -9999.0  # JSON has no -Infinity; vLLM reports this instead


@dataclass
class Entry:
    """One output token's logprobs, as text."""

    token: str
    logprob: float
    top: list[tuple[str, float]]
    offset: int  # where the token's text starts in the choice's text (echo included)


@dataclass
class Delta:
    text: str
    entries: list[Entry] = field(default_factory=list)
    finish_reason: str | None = None


class Choice:
    """One sequence of a request: its text and logprobs so far, and how it ended."""

    def __init__(self, index: int, request_id: str, tokenizer, stops: list[str], echo: str = ""):
        self.index, self.request_id, self.tok, self.echo = index, request_id, tokenizer, echo
        self.detok, self.stops = make_detokenizer(tokenizer), StopStrings(stops)
        self.decoded = 0  # characters decoded so far (text offsets of the logprobs)
        self.finish_reason: str | None = None
        self.stopped_early = False  # a stop string ended it before the engine did
        self.num_prompt_tokens = self.num_output_tokens = 0

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def add(self, out: StepOutput) -> Delta:
        """This step's text (what is safe to send) and logprobs entries."""
        if self.done:  # outputs already in flight when a stop string ended the choice
            return Delta("")
        self.num_prompt_tokens, self.num_output_tokens = (
            out.num_prompt_tokens,
            out.num_output_tokens,
        )
        ids = out.new_token_ids
        if out.finished and out.finish_reason == "stop":
            ids = ids[:-1]  # the stop token is not text
        entries = [self.entry(out.logprobs)] if out.logprobs is not None and ids else []
        text = self.detok.add(ids) + (self.detok.flush() if out.finished else "")
        self.decoded += len(text)
        text = self.stops.add(text)
        if self.stops.stopped:
            self.finish_reason, self.stopped_early = "stop", not out.finished
        elif out.finished:
            text += self.stops.flush()
            self.finish_reason = out.finish_reason
        return Delta(text, entries, self.finish_reason)

    def entry(self, lp: TokenLogprobs) -> Entry:
        top = [(self.token_text(t), max(v, LOGPROB_FLOOR)) for t, v in lp.top]
        offset = len(self.echo) + self.decoded
        return Entry(self.token_text(lp.token_id), max(lp.logprob, LOGPROB_FLOOR), top, offset)

    def token_text(self, token_id: int) -> str:
        return self.tok.decode([token_id])


def completion_logprobs(entries: list[Entry]) -> dict:
    """The completions API's logprobs object: parallel lists, one item per token."""
    return {
        "tokens": [e.token for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [dict(e.top) for e in entries],
        "text_offset": [e.offset for e in entries],
    }


def chat_logprobs(entries: list[Entry]) -> dict:
    """The chat API's logprobs object: one item per token, with its UTF-8 bytes."""

    def item(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    return {
        "content": [
            {**item(e.token, e.logprob), "top_logprobs": [item(t, v) for t, v in e.top]}
            for e in entries
        ]
    }


def usage(choices: list[Choice], n: int) -> dict:
    """Tokens of the request: each prompt counted once (not once per choice), every output."""
    prompt = sum(c.num_prompt_tokens for c in choices[::n])
    completion = sum(c.num_output_tokens for c in choices)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def choice_body(c: Choice, text: str, entries: list[Entry] | None, chat: bool) -> dict:
    """One item of a non-streamed response's `choices` (entries None: logprobs not asked)."""
    if chat:
        lps = chat_logprobs(entries) if entries is not None else None
        msg = {"role": "assistant", "content": text}
        return {"index": c.index, "message": msg, "logprobs": lps, "finish_reason": c.finish_reason}
    lps = completion_logprobs(entries) if entries is not None else None
    return {"index": c.index, "text": text, "logprobs": lps, "finish_reason": c.finish_reason}


def chunk_choice(index: int, delta: Delta, chat: bool, logprobs: bool) -> dict:
    """One item of a streamed chunk's `choices` (used when the chunk carries logprobs)."""
    body: dict = {"index": index}
    if chat:
        body["delta"] = {"content": delta.text}
        body["logprobs"] = chat_logprobs(delta.entries) if logprobs else None
    else:
        body["text"] = delta.text
        body["logprobs"] = completion_logprobs(delta.entries) if logprobs else None
    body["finish_reason"] = delta.finish_reason
    return body


def token_event_writer(head: dict, obj: str, chat: bool):
    """The per-token SSE event without logprobs, the hot path (one per token per stream): its
    constant part is serialized once, only the index, text and finish reason per token."""
    prefix = "data: " + json.dumps({**head, "object": obj})[:-1] + ', "choices": [{"index": '
    text_key = ', "delta": {"content": ' if chat else ', "text": '
    text_end = "}" if chat else ', "logprobs": null'

    def token_event(index: int, text: str, finish: str | None) -> str:
        return (
            f"{prefix}{index}{text_key}{json.dumps(text)}{text_end}, "
            f'"finish_reason": {json.dumps(finish)}}}]}}\n\n'
        )

    return token_event


@dataclass
class Run:
    """The sequences of one request: their choices and queues, and what the answer holds."""

    choices: list[Choice]
    queues: list[asyncio.Queue]
    n: int  # choices per prompt
    logprobs: bool
    chat: bool
    deadline: float | None = None  # event-loop time after which the request gets 504


def sse(data: dict) -> str:
    """One server-sent event: `data: <json>` and a blank line."""
    return f"data: {json.dumps(data)}\n\n"
