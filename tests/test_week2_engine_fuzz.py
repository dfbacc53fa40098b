"""Issue #11: the engine server fuzzed from its own OpenAPI description (schemathesis).

Schemathesis reads /openapi.json and generates requests for every operation: bodies that fit
the schema (to find crashes behind validation) and bodies that break it (to check that the
refusal is a clean 4xx). The property is the server's contract with any client: no 5xx, no
hang, and the server still healthy and serving afterwards. Bounded in examples and time so it
fits in make test; the seed is fixed so a failure reproduces.
"""

from __future__ import annotations

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable

from tests.engine_server_helpers import engine_idle, running_server, tiny_engine, wait_until

pytestmark = pytest.mark.slow

EXAMPLES = 60  # per operation (both modes)


@pytest.fixture(scope="module")
def fuzz_server(tiny_gpt):
    engine = tiny_engine(tiny_gpt["hf_dir"], max_num_seqs=8)
    with running_server(engine) as (url, _):
        yield url, engine


def operations(url: str):
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    return [op.ok() for op in schema.get_all_operations()]


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_operation_answers_5xx_or_hangs(fuzz_server, mode):
    url, engine = fuzz_server
    ops = operations(url)
    paths = {op.path for op in ops}
    assert {"/v1/completions", "/v1/chat/completions", "/v1/models", "/health"} <= paths
    seen: list[tuple[str, int]] = []
    mode_enum = (
        schemathesis.GenerationMode.POSITIVE
        if mode == "positive"
        else (schemathesis.GenerationMode.NEGATIVE)
    )
    with httpx.Client(base_url=url, timeout=30) as client:
        for op in ops:
            strategy = op.as_strategy(generation_mode=mode_enum)

            @seed(1234)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
                database=None,
            )
            @given(case=strategy)
            def check(case):
                kwargs = case.as_transport_kwargs(base_url=url)
                kwargs.pop("base_url", None)
                method, path = kwargs.pop("method"), kwargs.pop("url")
                r = client.request(method, path, **_httpx_kwargs(kwargs))
                seen.append((path, r.status_code))
                assert r.status_code < 500, (method, path, kwargs, r.status_code, r.text[:300])

            try:
                check()
            except Unsatisfiable:  # nothing to break: an operation without parameters or body
                assert mode == "negative", op.label
                assert not list(op.iter_parameters()), op.label
                assert not op.get_request_payload_content_types(), op.label
    completions = [status for path, status in seen if path.endswith("/v1/completions")]
    assert len(completions) >= EXAMPLES // 2, seen  # the fuzz reached generation, many times
    if mode == "negative":  # schema-breaking bodies are refused, not served
        assert all(400 <= s < 500 for s in completions), completions
    assert httpx.get(url + "/health").status_code == 200
    good = {"model": "tiny", "prompt": "The", "max_tokens": 4}
    assert httpx.post(url + "/v1/completions", json=good, timeout=30).status_code == 200
    wait_until(lambda: engine_idle(engine), 30, "every fuzzed request to finish")


def _httpx_kwargs(kwargs: dict) -> dict:
    """schemathesis' request arguments (requests-style) as httpx takes them."""
    out = {k: kwargs[k] for k in ("headers", "params", "cookies") if kwargs.get(k) is not None}
    if "json" in kwargs:
        out["json"] = kwargs["json"]
    elif kwargs.get("data") is not None:
        out["content"] = kwargs["data"]
    return out
