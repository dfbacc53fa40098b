"""Requests a server must refuse with a 4xx and survive: the hostile set of the soak test.

Each entry is a name and a raw request body (bytes, so that bodies which are not valid JSON, or
JSON that Python's `json` writes but the spec forbids, such as `NaN`, can be sent as they are).
A conforming OpenAI-compatible server answers every one of them with a 4xx and an error body;
a 5xx, a hang or a dropped connection is a bug. The model name is filled in by `hostile_bodies`.
"""

from __future__ import annotations

import json

BIG = 2**64  # one past the largest unsigned 64-bit integer


def _completion(model: str, **fields: object) -> dict:
    return {"model": model, "prompt": "Once upon a time", "max_tokens": 8, **fields}


def _raw(model: str, tail: str) -> bytes:
    """A body whose tail is spliced in as text (for NaN, Infinity, huge integers)."""
    head = f'{{"model": {json.dumps(model)}, "prompt": "hi", "max_tokens": 4, '
    return (head + tail + "}").encode()


def hostile_bodies(model: str) -> list[tuple[str, bytes]]:
    """(name, body) pairs, each of which must get a 4xx from /v1/completions."""
    as_json = {
        "seed beyond 64 bits": _completion(model, seed=BIG),
        "negative seed beyond 64 bits": _completion(model, seed=-BIG),
        "negative temperature": _completion(model, temperature=-1.0),
        "huge temperature": _completion(model, temperature=1e300),
        "top_p zero": _completion(model, top_p=0.0),
        "top_p above one": _completion(model, top_p=1.5),
        "top_k below -1": _completion(model, top_k=-5),
        "max_tokens zero": _completion(model, max_tokens=0),
        "max_tokens negative": _completion(model, max_tokens=-1),
        "max_tokens beyond 64 bits": _completion(model, max_tokens=BIG),
        "max_tokens a string": _completion(model, max_tokens="8"),
        "prompt a number": _completion(model, prompt=5),
        "prompt token out of vocabulary": _completion(model, prompt=[1, 2, 10**9]),
        "prompt token negative": _completion(model, prompt=[1, -2]),
        "prompt empty list": _completion(model, prompt=[]),
        "n zero": _completion(model, n=0),
        "n huge": _completion(model, n=10**6),
        "stop list too long": _completion(model, stop=["x"] * 1000),
        "logit_bias junk": _completion(model, logit_bias={"not-a-token": "x"}),
        "unknown model": _completion("no-such-model"),
        "missing prompt": {"model": model},
        "body is a list": [_completion(model)],
        "body is a string": "hello",
    }
    bodies = [(name, json.dumps(body).encode()) for name, body in as_json.items()]
    bodies += [
        ("temperature NaN", _raw(model, '"temperature": NaN')),
        ("temperature Infinity", _raw(model, '"temperature": Infinity')),
        ("top_p -Infinity", _raw(model, '"top_p": -Infinity')),
        ("seed 2**70 as a literal", _raw(model, f'"seed": {2**70}')),
        ("max_tokens 1e400", _raw(model, '"max_tokens": 1e400')),
        ("not JSON", b'{"model": "x", "prompt": '),
        ("empty body", b""),
        ("deeply nested", b"[" * 10_000 + b"]" * 10_000),
    ]
    return bodies
