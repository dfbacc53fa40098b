"""Week 2b: our engine's HTTP server, started for real by the launcher (and in-process)."""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from week2_serving.harness import bench
from week2_serving.harness.launch import launch


@pytest.fixture(scope="module")
def engine_srv(tiny_gpt, tmp_path_factory):
    """Our engine serving the tiny export as "tiny", with a small KV pool (48 blocks of 8)."""
    extra = ["--num-kv-blocks", "48", "--block-size", "8", "--max-num-seqs", "32"]
    extra += ["--dtype", "float32"]  # as the in-process tests (auto: bf16 on a BF16 CPU)
    with launch(
        "engine",
        tiny_gpt["hf_dir"],
        extra=extra,
        log_dir=tmp_path_factory.mktemp("engine"),
        served_name="tiny",
        timeout_s=120,
    ) as srv:
        yield srv


def metrics(url: str) -> dict[str, float]:
    """The server's Prometheus metrics by sample name (labels summed over), plus `aborted`."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url + "/metrics").text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + s.value
            if (
                s.name == "vllm:request_success_total"
                and s.labels.get("finished_reason") == "abort"
            ):
                out["aborted"] = out.get("aborted", 0.0) + s.value
    out.setdefault("aborted", 0.0)
    return out


def idle(m: dict[str, float]) -> bool:
    """Nothing running or waiting and every KV block free."""
    return (
        m["vllm:num_requests_running"] == 0
        and m["vllm:num_requests_waiting"] == 0
        and m["vllm:kv_cache_usage_perc"] == 0
    )


def wait_idle(url: str, timeout: float = 20.0) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        m = metrics(url)
        if idle(m) or time.monotonic() > deadline:
            return m
        time.sleep(0.1)


def post(url: str, path: str, body, **kw) -> httpx.Response:
    if isinstance(body, (dict, list)):
        return httpx.post(url + path, json=body, timeout=30, **kw)
    return httpx.post(
        url + path, content=body, headers={"content-type": "application/json"}, timeout=30
    )


@pytest.mark.parametrize(
    "body,fragment",
    [
        ('{"model": "tiny", "prompt": "hi", ', "not valid JSON"),
        ({"model": "tiny"}, "prompt"),
        ({"prompt": "hi"}, "model"),
        ({"model": "tiny", "prompt": "hi", "max_tokens": "5"}, "max_tokens"),
        ({"model": "tiny", "prompt": 5}, "prompt"),
        ({"model": "tiny", "prompt": "hi", "max_tokens": 0}, "max_tokens=0"),
        ({"model": "tiny", "prompt": "hi", "max_tokens": -3}, "max_tokens=-3"),
        ({"model": "tiny", "prompt": "hi", "temperature": -1}, "temperature"),
        ({"model": "tiny", "prompt": "word " * 200, "max_tokens": 4}, "context"),
        ({"model": "tiny", "prompt": [1, 2, 100000]}, "outside the vocabulary"),
    ],
)
def test_bad_requests_get_400_with_an_openai_error_body(engine_srv, body, fragment):
    r = post(engine_srv.url, "/v1/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and err["code"] == 400 and err["type"]


def test_bad_chat_request_and_unknown_model(engine_srv):
    r = post(engine_srv.url, "/v1/chat/completions", {"model": "tiny", "messages": "hi"})
    assert r.status_code == 400 and "messages" in r.json()["error"]["message"]
    r = post(engine_srv.url, "/v1/completions", {"model": "gpt-9", "prompt": "hi"})
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "The model `gpt-9` does not exist."
    assert httpx.get(engine_srv.url + "/health").status_code == 200  # still serving


def test_models_health_and_a_completion(engine_srv):
    models = httpx.get(engine_srv.url + "/v1/models").json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    r = post(engine_srv.url, "/v1/completions", {"model": "tiny", "prompt": "The", "max_tokens": 6})
    body = r.json()
    assert r.status_code == 200 and body["usage"]["completion_tokens"] <= 6
    assert body["choices"][0]["finish_reason"] in ("length", "stop")


def test_version_is_recorded_by_provenance(engine_srv):
    from importlib.metadata import version

    from common.provenance import server_versions

    assert httpx.get(engine_srv.url + "/version").json()["engine"] == "ie-engine"
    got = server_versions(engine_srv.url)
    assert got.get("ie-engine") == version("inference-engineering"), got


def test_client_that_disconnects_mid_stream_is_aborted(engine_srv):
    before = metrics(engine_srv.url)["aborted"]
    body = {"model": "tiny", "prompt": "The", "max_tokens": 100, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", engine_srv.url + "/v1/completions", json=body, timeout=30) as r:
        events = 0
        for line in r.iter_lines():
            events += line.startswith("data:")
            if events == 3:
                break  # leave with ~97 tokens still to go
    m = wait_idle(engine_srv.url)
    assert m["aborted"] == before + 1 and idle(m)


def test_openai_client_streaming_and_not(engine_srv):
    from openai import OpenAI

    client = OpenAI(base_url=engine_srv.url + "/v1", api_key="unused")
    done = client.completions.create(model="tiny", prompt="The list", max_tokens=8, temperature=0)
    streamed = client.completions.create(
        model="tiny", prompt="The list", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == done.choices[0].text
    chat = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hello"}], max_tokens=5, temperature=0
    )
    chunks = client.chat.completions.create(
        model="tiny",
        messages=[{"role": "user", "content": "hello"}],
        max_tokens=5,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for c in chunks:
        if c.choices:
            parts.append(c.choices[0].delta.content or "")
        usage = c.usage or usage
    assert "".join(parts) == chat.choices[0].message.content
    assert usage.completion_tokens == chat.usage.completion_tokens


def test_1000_requests_at_concurrency_64_with_kv_pressure(engine_srv, tiny_gpt):
    """48 blocks of 8 tokens cannot hold 32 running requests: the engine must preempt, not fail."""
    res = bench.main(
        bench.BenchConfig(
            base_url=engine_srv.url,
            model="tiny",
            tokenizer=str(tiny_gpt["hf_dir"]),
            num_prompts=1000,
            random_input_len=8,
            random_output_len=8,
            random_range_ratio=0.5,
            max_concurrency=64,
            num_warmups=0,
            save=False,
        )
    )
    assert res["completed"] == 1000 and res["failed"] == 0, res["errors"]
    m = wait_idle(engine_srv.url)
    assert idle(m) and m["vllm:num_preemptions_total"] > 0


def test_api_key_in_process(tiny_gpt):
    from fastapi.testclient import TestClient

    from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
    from week2_serving.engine.server import create_app

    engine = LLMEngine(EngineConfig(model=tiny_gpt["hf_dir"], num_blocks=32, dtype="float32"))
    with TestClient(create_app(engine, "tiny", api_key="sesame")) as client:
        body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
        assert client.post("/v1/completions", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/v1/completions", json=body, headers=wrong).status_code == 401
        ok = client.post("/v1/completions", json=body, headers={"Authorization": "Bearer sesame"})
        assert ok.status_code == 200 and json.loads(ok.text)["usage"]["completion_tokens"] >= 1
        assert client.get("/health").status_code == 200  # health needs no key


def test_engine_cpus_spec(monkeypatch):
    """--engine-cpus: 'auto' keeps the last allowed core for the event loop and the client."""
    from week2_serving.engine.server import engine_cpus

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert engine_cpus("auto") == {0, 1, 2}
    assert engine_cpus("all") is None
    assert engine_cpus("0,2") == {0, 2}
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3})
    assert engine_cpus("auto") is None  # one core: nothing to split
    for bad in ("x", "0,9"):
        with pytest.raises(SystemExit, match="--engine-cpus"):
            engine_cpus(bad)
