"""Issue #11: `cache_salt` through the API isolates tenants in the prefix cache (as vLLM's)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.engine_server_helpers import running_server, tiny_engine

PROMPT = list(range(1, 49))  # three full blocks of 16 tokens


def hits(url: str) -> float:
    text = httpx.get(url + "/metrics").text
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "vllm:prefix_cache_hits_total"
    )


def test_cache_salt_separates_tenants_and_same_salt_shares(tiny_gpt):
    engine = tiny_engine(tiny_gpt["hf_dir"], block_size=16)
    with running_server(engine) as (url, _):

        def ask(**extra) -> httpx.Response:
            body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 2, "temperature": 0, **extra}
            return httpx.post(url + "/v1/completions", json=body, timeout=30)

        first = ask(cache_salt="tenant-a")
        assert first.status_code == 200, first.text
        before = hits(url)
        other = ask(cache_salt="tenant-b")  # another tenant: nothing shared
        assert hits(url) == before
        unsalted = ask()  # no salt: not the salted tenant's blocks either
        assert hits(url) == before
        again = ask(cache_salt="tenant-a")  # the same tenant: its blocks are reused
        assert hits(url) > before
        texts = {r.json()["choices"][0]["text"] for r in (first, other, unsalted, again)}
        assert len(texts) == 1  # greedy: the same answer whatever the cache did
        bad = ask(cache_salt="")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "cache_salt"
