"""Structured output (week2_serving/engine/structured.py): the grammar's mask, offline and served.

The tiny model writes almost at random, which is the point: whatever it prefers, the mask must
keep every output inside the grammar. The schema and regex are bounded (schema_check.py) so
that every sequence ends with the grammar's stop token well inside max_tokens.
"""

from __future__ import annotations

import json
import re

import httpx
import pytest
import torch

from tests.engine_server_helpers import running_server, tiny_engine
from week2_serving.engine.schema_check import (
    BOUNDED_REGEX,
    BOUNDED_SCHEMA,
    CHOICES,
    schema_errors,
)
from week2_serving.engine.sequence import SamplingParams
from week2_serving.engine.structured import (
    MAX_SPEC_CHARS,
    Grammars,
    StructuredError,
    generate,
    make_spec,
)

PROMPTS = ["The list type", "A dict is", "def f(x):", "import os", "Python is"] * 2  # 10 x 2 runs
COMPACT = {"disable_any_whitespace": True}  # no optional whitespace: shorter JSON


@pytest.fixture(scope="module")
def engine(tiny_gpt):
    return tiny_engine(tiny_gpt["hf_dir"], num_blocks=128, block_size=8)


@pytest.fixture(scope="module")
def grammars(engine):
    return Grammars(engine.tokenizer, engine.runner.cfg.vocab_size)


def texts(engine, seqs) -> list[str]:
    return [engine.tokenizer.decode(s.output_token_ids, skip_special_tokens=True) for s in seqs]


def run(engine, grammars, spec, temperature: float, max_tokens: int = 100):
    params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=7)
    seqs = generate(engine, grammars, PROMPTS, params, spec)
    return seqs, texts(engine, seqs)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_schema_outputs_parse_and_validate(engine, grammars, temperature):
    spec = make_spec("json_schema", BOUNDED_SCHEMA, "json", any_whitespace=False)
    seqs, outs = run(engine, grammars, spec, temperature)
    assert [s.finish_reason for s in seqs] == ["stop"] * len(PROMPTS), outs
    for text in outs:
        assert schema_errors(json.loads(text), BOUNDED_SCHEMA) == [], text
    jsonschema_rs = pytest.importorskip("jsonschema_rs")  # a second, independent validator
    assert all(jsonschema_rs.is_valid(BOUNDED_SCHEMA, json.loads(t)) for t in outs)


def test_regex_choice_and_json_object(engine, grammars):
    seqs, outs = run(engine, grammars, make_spec("regex", BOUNDED_REGEX, "regex"), 1.0)
    assert all(s.finish_reason == "stop" for s in seqs)
    assert all(re.fullmatch(BOUNDED_REGEX, t) for t in outs), outs
    seqs, outs = run(engine, grammars, make_spec("choice", CHOICES, "choice"), 1.0)
    assert all(s.finish_reason == "stop" for s in seqs) and set(outs) <= set(CHOICES), outs
    seqs, outs = run(engine, grammars, make_spec("json_object", True, "json_object"), 0.0, 60)
    for s, text in zip(seqs, outs):  # free-form: may run out of tokens; if it stopped, it parses
        assert text.startswith("{")
        if s.finish_reason == "stop":
            assert isinstance(json.loads(text), dict)


def test_the_mask_does_the_work(engine, grammars):
    """Without the grammar the same seed writes something else; with it, every chosen token
    was one the matcher allowed at that point (replayed through a fresh matcher)."""
    spec = make_spec("regex", BOUNDED_REGEX, "regex")
    _, free = run(engine, grammars, None, 1.0, max_tokens=20)
    assert not any(re.fullmatch(BOUNDED_REGEX, t) for t in free)
    seqs, _ = run(engine, grammars, spec, 1.0)
    for seq in seqs:
        replay = grammars.matcher(spec)
        for token in seq.output_token_ids:
            assert replay.allowed_mask()[token], token
            assert replay.accept(token)
        assert replay.is_terminated()


def test_mask_matches_the_allowed_tokens_and_rolls_back(engine, grammars):
    tok, vocab = engine.tokenizer, engine.runner.cfg.vocab_size
    state = grammars.matcher(make_spec("regex", "[0-9]+", "regex"))
    allowed = state.allowed_mask()
    assert allowed.shape == (vocab,) and allowed.dtype == torch.bool
    digits = {t for t in range(len(tok)) if re.fullmatch("[0-9]+", tok.decode([t]))}
    assert set(allowed.nonzero().flatten().tolist()) == digits  # no EOS before a digit
    logits = torch.randn(1, vocab)
    masked = state.mask(logits)
    assert torch.equal(masked[0].isfinite(), allowed) and not torch.equal(masked, logits)
    first = min(digits)
    assert state.accept(first) and state.allowed_mask()[tok.eos_token_id]
    state.rollback(1)
    assert torch.equal(state.allowed_mask(), allowed)
    assert not state.accept(tok.encode("a")[0])  # refused, nothing changes
    assert state.num_accepted == 0


def test_model_vocab_larger_than_the_tokenizer(engine):
    """A model padded past its tokenizer: the padding ids exist in the logits, never allowed."""
    tok = engine.tokenizer
    padded = Grammars(tok, len(tok) + 40)
    allowed = padded.matcher(make_spec("json_object", True, "x")).allowed_mask()
    assert allowed.shape == (len(tok) + 40,)
    assert allowed[: len(tok)].any() and not allowed[len(tok) :].any()


def test_grammars_are_cached_by_spec(engine):
    g = Grammars(engine.tokenizer, engine.runner.cfg.vocab_size, cache_size=1)
    a, b = make_spec("regex", "a+", "r"), make_spec("regex", "b+", "r")
    g.compile(a), g.compile(a), g.compile(b), g.compile(a)
    assert (g.hits, g.misses) == (1, 3)  # the cache holds one: b evicted a


@pytest.mark.parametrize(
    "kind, value, fragment",
    [
        ("choice", [], "list of 1 to"),
        ("choice", ["a", ""], "non-empty"),
        ("regex", "x" * (MAX_SPEC_CHARS + 1), "at most"),
        ("json_schema", "{not json", "not valid JSON"),
        ("json_schema", [1], "JSON object"),
        ("json_schema", json.loads('{"a":' * 40 + "1" + "}" * 40), "deeper"),
    ],
)
def test_bad_specs_name_the_field(kind, value, fragment):
    with pytest.raises(StructuredError, match=fragment) as err:
        make_spec(kind, value, "structured_outputs.x")
    assert err.value.param == "structured_outputs.x"


def test_grammar_requests_share_a_speculating_engine(tiny_gpt):
    """With speculation on, a sequence with a grammar decodes without guesses (and stays
    valid) while the plain sequences beside it speculate."""
    from week2_serving.engine.spec.config import SpecConfig
    from week2_serving.engine.structured import Grammars as G

    eng = tiny_engine(
        tiny_gpt["hf_dir"], num_blocks=128, block_size=8, speculative=SpecConfig("ngram", 3)
    )
    spec = make_spec("json_schema", BOUNDED_SCHEMA, "json", any_whitespace=False)
    compiled = G(eng.tokenizer, eng.runner.cfg.vocab_size).compile(spec)
    params = SamplingParams(max_tokens=100, temperature=0.0)
    structured = [eng.make_sequence(p, params) for p in PROMPTS[:3]]
    grammars = G(eng.tokenizer, eng.runner.cfg.vocab_size)
    for seq in structured:
        seq.grammar = grammars.matcher(compiled)
        eng.add_sequence(seq)
    plain = eng.add_request(
        "the the the the the the", SamplingParams(max_tokens=40, ignore_eos=True)
    )
    while eng.has_unfinished():
        eng.step()
    for text in texts(eng, structured):
        assert schema_errors(json.loads(text), BOUNDED_SCHEMA) == [], text
    assert plain.num_output_tokens == 40
    assert eng.spec.metrics.summary()["drafts"] > 0  # the plain sequence did speculate


def post(url: str, path: str, body: dict) -> httpx.Response:
    return httpx.post(url + path, json={"model": "tiny", **body}, timeout=60)


BAD_REQUESTS = [  # (body, the param the 400 must name)
    (
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "foo"}},
            }
        },
        "response_format.json_schema.schema",
    ),  # noqa: E501
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, "response_format"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"structured_outputs": {"regex": "(ab"}}, "structured_outputs.regex"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs.choice"),
    ({"structured_outputs": {"grammar": "root ::= "}}, "structured_outputs.grammar"),
    ({"structured_outputs": {"regex": "a", "choice": ["a"]}}, "structured_outputs.choice"),
    ({"structured_outputs": {"disable_any_whitespace": True}}, "structured_outputs"),
    ({"structured_outputs": {"regex": "a+"}, "ignore_eos": True}, "ignore_eos"),
    ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs"),
]


def test_server_refuses_bad_specs_and_serves_good_ones(tiny_gpt):
    eng = tiny_engine(tiny_gpt["hf_dir"], num_blocks=64, block_size=8)
    with running_server(eng) as (url, _):
        for body, param in BAD_REQUESTS:
            r = post(url, "/v1/completions", {"prompt": "The", "max_tokens": 8, **body})
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"]["param"] == param, (body, r.text)
        schema = {"type": "json_schema", "json_schema": {"name": "pet", "schema": BOUNDED_SCHEMA}}
        body = {"response_format": schema, "structured_outputs": COMPACT, "max_tokens": 100}
        r = post(url, "/v1/completions", {"prompt": "The", "temperature": 1.0, **body})
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert schema_errors(json.loads(choice["text"]), BOUNDED_SCHEMA) == []
        msgs = [{"role": "user", "content": "pick"}]
        so = {"choice": CHOICES}
        r = post(url, "/v1/chat/completions", {"messages": msgs, "structured_outputs": so, "n": 2})
        assert r.status_code == 200, r.text
        assert {c["message"]["content"] for c in r.json()["choices"]} <= set(CHOICES)
        so = {"regex": BOUNDED_REGEX}
        body = {"prompt": "The", "structured_outputs": so, "stream": True, "max_tokens": 40}
        r = post(url, "/v1/completions", body)
        events = [json.loads(line[6:]) for line in r.text.splitlines() if line[6:7] == "{"]
        text = "".join(c["text"] for e in events for c in e["choices"])
        assert re.fullmatch(BOUNDED_REGEX, text), text  # streamed pieces add up to a match
