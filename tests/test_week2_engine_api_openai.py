"""Week 2b engine API: what each OpenAI field means (stop, n, logprobs, echo, usage, EOS), and
streamed text == non-streamed text for the same request and seed."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from week2_serving.engine.detokenizer import Detokenizer, StopStrings
from week2_serving.engine.llm_engine import StepOutput
from week2_serving.engine.responses import Choice
from week2_serving.engine.sequence import SamplingParams, Sequence

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def served(tiny_gpt):
    from fastapi.testclient import TestClient

    from week2_serving.engine.api import create_app
    from week2_serving.engine.llm_engine import EngineConfig, LLMEngine

    engine = LLMEngine(
        EngineConfig(model=tiny_gpt["hf_dir"], num_blocks=128, block_size=8, dtype="float32")
    )
    with TestClient(create_app(engine, "tiny")) as c:
        yield c, engine.tokenizer


def complete(client, path="/v1/completions", **fields) -> dict:
    body = {"model": "tiny", "temperature": 0, **fields}  # greedy unless told
    if path == CHAT:
        body.setdefault("messages", [{"role": "user", "content": "hello"}])
    else:
        body.setdefault("prompt", "The list")
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def streamed(client, path="/v1/completions", **fields) -> tuple[dict[int, str], list[dict]]:
    """The text of each choice index, concatenated from the stream, and every chunk."""
    body = {"model": "tiny", "stream": True, "temperature": 0, **fields}
    if path == CHAT:
        body.setdefault("messages", [{"role": "user", "content": "hello"}])
    texts: dict[int, str] = {}
    chunks = []
    with client.stream("POST", path, json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunk = json.loads(line[6:])
                chunks.append(chunk)
                for c in chunk["choices"]:
                    piece = c["delta"].get("content") if path == CHAT else c["text"]
                    texts[c["index"]] = texts.get(c["index"], "") + (piece or "")
    return texts, chunks


def test_stop_string_across_a_token_boundary(served):
    client, _ = served
    fields = {"max_tokens": 30, "ignore_eos": True, "temperature": 1.0, "seed": 5}
    free = complete(client, logprobs=0, **fields)["choices"][0]
    text, offsets = free["text"], free["logprobs"]["text_offset"]
    b = next(o for o in offsets[3:] if 0 < o < len(text) - 1 and text[o - 1 : o + 1].strip())
    stop = text[b - 1 : b + 1]  # its first character ends one token, its second starts the next
    want = text[: text.index(stop)]
    cut = complete(client, stop=[stop, "\x00never"], **fields)
    assert cut["choices"][0]["text"] == want and cut["choices"][0]["finish_reason"] == "stop"
    assert cut["usage"]["completion_tokens"] < 30  # the engine stopped too
    texts, chunks = streamed(client, prompt="The list", stop=stop, **fields)
    assert texts[0] == want and chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_n_choices_are_seeded_per_choice(served):
    client, tok = served
    fields = {"max_tokens": 12, "temperature": 1.0, "seed": 11, "ignore_eos": True}
    three = complete(client, n=3, **fields)
    texts = [c["text"] for c in three["choices"]]
    assert [c["index"] for c in three["choices"]] == [0, 1, 2] and len(set(texts)) > 1
    assert texts == [c["text"] for c in complete(client, n=3, **fields)["choices"]]
    assert texts[0] == complete(client, **fields)["choices"][0]["text"]  # choice 0: the seed
    assert three["usage"]["completion_tokens"] == 36 and three["usage"]["prompt_tokens"] == len(
        tok.encode("The list")
    )
    two_prompts = complete(client, prompt=["The list", "A dict"], n=2, **fields)
    assert [c["text"] for c in two_prompts["choices"]][:2] == texts[:2]  # index = p * n + i


def test_completion_logprobs_follow_the_openai_shape(served):
    client, _ = served
    out = complete(client, max_tokens=8, ignore_eos=True, logprobs=3, temperature=0)
    lp, n = out["choices"][0]["logprobs"], out["usage"]["completion_tokens"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == n
    assert lp["text_offset"] == sorted(lp["text_offset"]) and lp["text_offset"][0] == 0
    for tok, value, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert 1 <= len(top) <= 3 and value <= 0
        assert value == pytest.approx(max(top.values()))  # greedy: the chosen is the top one
        assert top.get(tok, value) == pytest.approx(value)


def test_chat_logprobs_and_stream_chunks_carry_them(served):
    client, _ = served
    out = complete(client, CHAT, max_tokens=5, logprobs=True, top_logprobs=2, ignore_eos=True)
    content = out["choices"][0]["logprobs"]["content"]
    assert len(content) == 5 and all(len(e["top_logprobs"]) == 2 for e in content)
    assert all(e["bytes"] == list(e["token"].encode()) for e in content)
    _, chunks = streamed(client, CHAT, max_tokens=5, logprobs=True, ignore_eos=True)
    got = [
        e
        for ch in chunks
        for c in ch["choices"]
        for e in (c.get("logprobs") or {}).get("content", [])
    ]
    assert [e["token"] for e in got] == [e["token"] for e in content]


def test_echo_prepends_the_prompt_text(served):
    client, tok = served
    ids = tok.encode("The list")
    out = complete(client, prompt=ids, max_tokens=4, echo=True)["choices"][0]["text"]
    plain = complete(client, prompt=ids, max_tokens=4)["choices"][0]["text"]
    assert out == tok.decode(ids) + plain
    texts, _ = streamed(client, prompt="The list", max_tokens=4, echo=True)
    assert texts[0] == "The list" + complete(client, max_tokens=4)["choices"][0]["text"]


def test_include_usage_is_a_last_chunk_with_no_choices(served):
    client, _ = served
    fields = {"prompt": "The list", "max_tokens": 6, "ignore_eos": True, "n": 2}
    _, chunks = streamed(client, stream_options={"include_usage": True}, **fields)
    assert (
        chunks[-1]["choices"] == [] and chunks[-1]["usage"] == complete(client, **fields)["usage"]
    )
    _, chunks = streamed(client, **fields)
    assert all("usage" not in c for c in chunks)


def test_stop_token_ids_min_tokens_and_ignore_eos(served):
    client, tok = served
    free = tok.encode(complete(client, max_tokens=20, ignore_eos=True)["choices"][0]["text"])
    stop_id = free[3]
    out = complete(client, max_tokens=20, ignore_eos=True, stop_token_ids=[stop_id])
    assert out["choices"][0]["finish_reason"] == "stop" and out["usage"]["completion_tokens"] <= 4
    late = complete(client, max_tokens=20, stop_token_ids=[stop_id], min_tokens=20)
    assert late["usage"]["completion_tokens"] == 20  # masked until the end
    eos = tok.eos_token_id
    seq = Sequence(
        [1], SamplingParams(max_tokens=9, ignore_eos=True, stop_token_ids=[7]), eos_token_id=eos
    )
    seq.append_token(eos)
    assert not seq.is_finished  # ignore_eos: EOS is just a token
    seq.append_token(7)
    assert seq.finish_reason == "stop"  # stop_token_ids still stop


def test_special_tokens_are_never_text(served):
    _, tok = served
    eos, word = tok.eos_token_id, tok.encode(" list")
    c = Choice(0, "r", tok, stops=[])
    mid = c.add(StepOutput("r", [eos], False, None, 1, 1))  # EOS under ignore_eos
    text = c.add(StepOutput("r", word, False, None, 1, 2)).text + mid.text
    last = c.add(StepOutput("r", [eos], True, "stop", 1, 3))  # the EOS that stops it
    assert text + last.text == " list" and tok.eos_token not in text + last.text


# --- properties -------------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(
    text=st.text("ab c", max_size=30),
    cuts=st.lists(st.integers(0, 30), max_size=6),
    stops=st.lists(st.text("abc", min_size=1, max_size=3), max_size=3),
)
def test_stop_strings_whatever_the_chunking(text, cuts, stops):
    m = StopStrings(stops)
    edges = sorted({0, len(text), *[min(c, len(text)) for c in cuts]})
    out = "".join(m.add(text[a:b]) for a, b in zip(edges, edges[1:])) + (
        "" if m.stopped else m.flush()
    )
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    assert out == (text[: min(hits)] if hits else text) and m.stopped == bool(hits)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ids=st.lists(st.integers(0, 511), max_size=24), step=st.integers(1, 4))
def test_incremental_detokenizer_equals_a_whole_decode(served, ids, step):
    _, tok = served
    d = Detokenizer(tok)
    out = "".join(d.add(ids[i : i + step]) for i in range(0, len(ids), step)) + d.flush()
    assert out == tok.decode(ids, skip_special_tokens=True)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prompt=st.text("abcdefghij ,.", min_size=1, max_size=20),
    max_tokens=st.integers(1, 24),
    temperature=st.sampled_from([0.0, 0.8, 1.5]),
    seed=st.integers(0, 2**64 - 1),
    stop=st.lists(st.text("aeiou ", min_size=1, max_size=2), max_size=2),
    n=st.integers(1, 2),
    chat=st.booleans(),
)
def test_streamed_text_equals_non_streamed(
    served, prompt, max_tokens, temperature, seed, stop, n, chat
):
    client, _ = served
    fields = {
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "stop": stop,
        "n": n,
    }
    path = CHAT if chat else "/v1/completions"
    where = {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}
    whole = complete(client, path, **where, **fields)["choices"]
    texts, _ = streamed(client, path, **where, **fields)
    want = {c["index"]: c["message"]["content"] if chat else c["text"] for c in whole}
    assert {i: texts.get(i, "") for i in want} == want
