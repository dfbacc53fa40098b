"""Multi-turn conversations: each turn's prompt holds the whole conversation so far.

A conversation of `num_turns` turns: turn 1 sends a user message of ~`input_len` tokens; the
server answers with `output_len` tokens; after a think time the user sends turn 2, whose prompt
is turn 1's prompt, an assistant reply and a new user message, and so on. The prompt grows by
(reply + message) every turn, and everything before the new message was sent before: the
traffic that prefix caching turns into skipped prefill.

The assistant replies placed in the history are synthetic token ids of the reply's length,
drawn when the workload is built (the server's own reply text is not fed back): the prompts
are known in advance and identical between runs and servers. So a server's cache can hit the
previous turn's *prompt* (its full KV blocks), not the reply it generated itself.

Turns of one conversation are sequential: turn t+1 is sent `think_time_s` after turn t's
response ended (bench's scheduler reads `TurnRequest.conversation/turn/think_time_s`). The
conversations start as the run's arrival process says (`--request-rate`, `--burstiness`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from week2_serving.harness.client import Request
from week2_serving.harness.synth import lengths, random_ids, vocabulary


@dataclass
class TurnRequest(Request):
    """One turn of a conversation; sent `think_time_s` after the previous turn finished."""

    conversation: int = 0
    turn: int = 0  # 0 = the first turn
    think_time_s: float = 0.0


def multi_turn_requests(
    tokenizer,
    num_conversations: int,
    num_turns: int,
    input_len: int,
    output_len: int,
    think_time_s: float = 0.0,
    range_ratio: float = 0.0,
    seed: int = 0,
    ignore_eos: bool = True,
) -> list[TurnRequest]:
    """The turns of every conversation, conversation by conversation, turn by turn."""
    if num_conversations < 1 or num_turns < 1:
        raise ValueError(
            f"num_conversations={num_conversations} and num_turns={num_turns} must be >= 1"
        )
    if think_time_s < 0:
        raise ValueError(f"think_time_s={think_time_s} must be >= 0")
    rng = np.random.default_rng(seed)
    vocab = vocabulary(tokenizer)
    reqs: list[TurnRequest] = []
    for c in range(num_conversations):
        history: list[int] = []
        ins = lengths(rng, input_len, range_ratio, num_turns)
        outs = lengths(rng, output_len, range_ratio, num_turns)
        for t in range(num_turns):
            prompt = history + random_ids(rng, vocab, int(ins[t]))
            reqs.append(
                TurnRequest(
                    prompt=prompt,
                    prompt_len=len(prompt),
                    output_len=int(outs[t]),
                    ignore_eos=ignore_eos,
                    conversation=c,
                    turn=t,
                    think_time_s=think_time_s if t else 0.0,
                )
            )
            history = prompt + random_ids(rng, vocab, int(outs[t]))  # the (synthetic) reply
    return reqs


def ttft_by_turn(rows: list[dict]) -> dict[str, dict]:
    """TTFT per turn index over the successful request records of results.json (each with
    `turn`, `ttft`, `prompt_len`, `success`), every run pooled: {turn: {n, mean_ttft_ms,
    median_ttft_ms, mean_prompt_len}}; empty for a workload without turns."""
    by: dict[int, list[dict]] = {}
    for row in rows:
        if row.get("turn") is not None and row.get("success"):
            by.setdefault(row["turn"], []).append(row)
    out = {}
    for turn in sorted(by):
        ttfts = np.array([r["ttft"] for r in by[turn]]) * 1000
        out[str(turn)] = {
            "n": len(ttfts),
            "mean_ttft_ms": float(ttfts.mean()),
            "median_ttft_ms": float(np.median(ttfts)),
            "mean_prompt_len": float(np.mean([r["prompt_len"] for r in by[turn]])),
        }
    return out
