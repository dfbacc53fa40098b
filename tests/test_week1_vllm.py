"""The exported week 1 folder starts in real vLLM (CPU build) and generates what our model does."""

from __future__ import annotations

import httpx
import pytest

from common.server import vllm_available
from week1_gpt_kvcache.checkpoint import load_model_and_tokenizer
from week1_gpt_kvcache.generate import SamplingParams, generate

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.slow,
    pytest.mark.skipif(
        not vllm_available(), reason="vLLM venv .venvs/vllm is absent (make setup-vllm)"
    ),
]


def test_vllm_serves_the_export_and_greedy_matches_ours(tiny_gpt, vllm_tiny):
    model, tok = load_model_and_tokenizer(tiny_gpt["checkpoint"])
    prompts = ["The ", "def __init__(self", "Operator precedence", "\n"]
    n = 24
    ours = generate(model, [tok.encode(p) for p in prompts], SamplingParams(max_tokens=n)).tokens
    models = httpx.get(vllm_tiny.url + "/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    for prompt, mine in zip(prompts, ours):
        r = httpx.post(
            vllm_tiny.url + "/v1/completions",
            timeout=60,
            json={
                "model": "tiny",
                "prompt": tok.encode(prompt),
                "max_tokens": n,
                "temperature": 0.0,
                "ignore_eos": True,
            },
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["text"] == tok.decode(mine), prompt
