"""Week 2b engine API: every request field has a type and a range; bad ones get an OpenAI 400.

In-process (FastAPI's TestClient): the same app the server runs, without a subprocess.
"""

from __future__ import annotations

import json

import pytest

from week2_serving.harness.client import Request, build_payload
from week2_serving.harness.hostile import hostile_bodies

CHAT = "/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def client(tiny_gpt):
    from fastapi.testclient import TestClient

    from week2_serving.engine.api import create_app
    from week2_serving.engine.llm_engine import EngineConfig, LLMEngine

    engine = LLMEngine(
        EngineConfig(model=tiny_gpt["hf_dir"], num_blocks=64, block_size=8, dtype="float32")
    )
    with TestClient(create_app(engine, "tiny")) as c:
        yield c


def completion(**fields) -> dict:
    return {"model": "tiny", "prompt": "The", "max_tokens": 4, **fields}


def chat(**fields) -> dict:
    return {"model": "tiny", "messages": MSGS, "max_tokens": 4, **fields}


def refused(client, body, path="/v1/completions"):
    r = client.post(path, json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == 400
    return err


BAD = [  # (body, the field the error must name, a fragment of the value)
    (completion(temperature=-0.5), "temperature", "-0.5"),
    (completion(temperature=2.5), "temperature", "2.5"),
    (completion(temperature="1"), "temperature", "'1'"),
    (completion(temperature=True), "temperature", "True"),
    (completion(top_p=0), "top_p", "0"),
    (completion(top_p=1.01), "top_p", "1.01"),
    (completion(top_k=-2), "top_k", "-2"),
    (completion(top_k=2**63), "top_k", str(2**63)),
    (completion(seed=2**64), "seed", str(2**64)),
    (completion(seed=-(2**63) - 1), "seed", str(-(2**63) - 1)),
    (completion(seed=1.5), "seed", "1.5"),
    (completion(max_tokens=0), "max_tokens", "0"),
    (completion(max_tokens=2**63), "max_tokens", str(2**63)),
    (completion(max_tokens=128), "max_tokens", "max_tokens is 128"),  # 1 + 128 > 128
    (completion(prompt=[5] * 129), "prompt", "129"),
    (completion(prompt=[1, -1]), "prompt", "-1"),
    (completion(prompt=[]), "prompt", "[]"),
    (completion(prompt=["a"] * 65), "prompt", "65"),
    (completion(prompt=[[1]] * 65), "prompt", "65"),
    (completion(n=0), "n", "0"),
    (completion(n=17), "n", "17"),
    (completion(prompt=["a"] * 9, n=15), "n", "135"),
    (completion(stop=["a", "b", "c", "d", "e"]), "stop", "'a'"),
    (completion(stop=""), "stop", "''"),
    (completion(stop="x" * 257), "stop", "xxx"),
    (completion(stop=[1]), "stop", "1"),
    (completion(logprobs=6), "logprobs", "6"),
    (completion(logprobs=True), "logprobs", "True"),
    (completion(echo=True, logprobs=1), "echo", "logprobs"),
    (completion(best_of=2), "best_of", "best_of=2"),
    (completion(suffix="x"), "suffix", "'x'"),
    (completion(min_tokens=5), "min_tokens", "min_tokens=5"),
    (completion(stop_token_ids=[-1]), "stop_token_ids", "-1"),
    (completion(ignore_eos="yes"), "ignore_eos", "'yes'"),
    (completion(stream_options={"include_usage": 1}), "stream_options", "1"),
    (completion(frequency_penalty=0.5), "frequency_penalty", "0.5"),
    (completion(presence_penalty=-1), "presence_penalty", "-1"),
    (completion(repetition_penalty=1.2), "repetition_penalty", "1.2"),
    (completion(min_p=0.1), "min_p", "0.1"),
    (completion(logit_bias={"5": 10}), "logit_bias", "10"),
    (completion(user=7), "user", "7"),
    (completion(best_of_n=2), "best_of_n", "unknown field"),
    (completion(model=5), "model", "5"),
]
BAD_CHAT = [
    (chat(logprobs=1), "logprobs", "1"),
    (chat(top_logprobs=21, logprobs=True), "top_logprobs", "21"),
    (chat(top_logprobs=2), "top_logprobs", "needs logprobs"),
    (chat(max_completion_tokens=0), "max_completion_tokens", "0"),
    (chat(messages=[]), "messages", "[]"),
    (chat(messages=[{"role": "robot", "content": "x"}]), "messages", "robot"),
    (chat(messages=[{"role": "user", "content": "x", "mood": 1}]), "messages", "mood"),
    (chat(response_format={"type": "xml"}), "response_format", "xml"),
    (chat(tools=[{"type": "function"}]), "tools", "function"),
    (chat(tool_choice="auto"), "tool_choice", "auto"),
    (chat(audio={"voice": "x"}), "audio", "unknown field"),
    (chat(reasoning_effort="low"), "reasoning_effort", "unknown field"),
]


@pytest.mark.parametrize("body,field,value", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_completion_fields_are_named_with_their_value(client, body, field, value):
    err = refused(client, body)
    assert err["param"] == field and field in err["message"] and value in err["message"]


@pytest.mark.parametrize("body,field,value", BAD_CHAT, ids=[b[1] for b in BAD_CHAT])
def test_bad_chat_fields_are_named_with_their_value(client, body, field, value):
    err = refused(client, body, CHAT)
    assert err["param"] == field and field in err["message"] and value in err["message"]


@pytest.mark.parametrize(
    "literal,field",
    [
        ("NaN", "temperature"),
        ("Infinity", "top_p"),
        ("-Infinity", "temperature"),
        ("1e999", "seed"),
    ],
)
def test_nan_and_infinity_are_refused(client, literal, field):
    raw = f'{{"model": "tiny", "prompt": "hi", "{field}": {literal}}}'
    r = client.post("/v1/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["param"] == field, r.text


def test_every_hostile_body_gets_a_4xx_and_the_server_survives(client):
    headers = {"content-type": "application/json"}
    for name, body in hostile_bodies("tiny"):
        r = client.post("/v1/completions", content=body, headers=headers)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
        assert "error" in r.json() or "detail" in r.json(), name
    assert client.get("/health").status_code == 200


NO_OPS = [
    {"frequency_penalty": 0, "presence_penalty": 0.0},
    {"logit_bias": {}},
    {"logit_bias": None, "user": "alice", "suffix": None},
    {"best_of": 2, "n": 2},
    {"repetition_penalty": 1.0, "min_p": 0},
    {"top_k": -1, "seed": -1},
    {"seed": 2**64 - 1, "top_k": 0},
    {"stream_options": None, "stop": None, "logprobs": None, "echo": False},
]


@pytest.mark.parametrize("fields", NO_OPS, ids=[",".join(f) for f in NO_OPS])
def test_fields_whose_value_changes_nothing_are_accepted(client, fields):
    r = client.post("/v1/completions", json=completion(**fields))
    assert r.status_code == 200, r.text


def test_chat_no_op_fields_are_accepted(client):
    fields = {
        "response_format": {"type": "text"},
        "tools": [],
        "tool_choice": "none",
        "store": False,
        "metadata": {"run": "1"},
        "parallel_tool_calls": False,
        "modalities": ["text"],
        "service_tier": "auto",
        "messages": [{"role": "developer", "content": [{"type": "text", "text": "be brief"}]}]
        + MSGS,
    }
    r = client.post(CHAT, json=chat(**fields))
    assert r.status_code == 200, r.text


def sse_ok(client, path: str, payload: dict) -> None:
    with client.stream("POST", path, json=payload) as r:
        assert r.status_code == 200, r.read()
        lines = [ln for ln in r.iter_lines() if ln.startswith("data:")]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][5:])["usage"]["completion_tokens"]


def test_what_our_clients_send_is_accepted(client):
    """The harness (both APIs), vLLM's `bench serve` payload and week 3's requests."""
    req = Request(prompt="The list", prompt_len=2, output_len=4)
    sse_ok(client, "/v1/completions", build_payload("openai", "tiny", req))
    sse_ok(client, CHAT, build_payload("openai-chat", "tiny", req))
    vllm_bench = {  # vllm/benchmarks/lib/endpoint_request_func.py, with --temperature 0
        "model": "tiny",
        "prompt": "The list",
        "repetition_penalty": 1.0,
        "max_tokens": 4,
        "logprobs": None,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
        "temperature": 0.0,
    }
    sse_ok(client, "/v1/completions", vllm_bench)
    week3 = {"model": "tiny", "prompt": ["a", "b", "c"], "max_tokens": 3, "temperature": 0.0}
    r = client.post("/v1/completions", json=week3)
    assert r.status_code == 200 and [c["index"] for c in r.json()["choices"]] == [0, 1, 2]
