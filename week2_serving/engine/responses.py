"""Pieces of the response bodies that several routes share."""

from __future__ import annotations

import json

from week2_serving.engine.llm_engine import StepOutput


def usage(out: StepOutput) -> dict:
    return {
        "prompt_tokens": out.num_prompt_tokens,
        "completion_tokens": out.num_output_tokens,
        "total_tokens": out.num_prompt_tokens + out.num_output_tokens,
    }


def token_event_writer(head: dict, obj: str, chat: bool):
    """The per-token SSE event, the hot path (one per token per stream): its constant part is
    serialized once, only the new text and the finish reason are encoded per token."""
    prefix = "data: " + json.dumps({**head, "object": obj})[:-1] + ', "choices": [{"index": 0, '
    text_key = '"delta": {"content": ' if chat else '"text": '
    text_end = "}" if chat else ', "logprobs": null'

    def token_event(text: str, finish: str | None) -> str:
        return f'{prefix}{text_key}{json.dumps(text)}{text_end}, "finish_reason": {json.dumps(finish)}}}]}}\n\n'

    return token_event
