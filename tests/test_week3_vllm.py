"""Week 3 on real vLLM (CPU build): two LoRA adapters served at once, each keeps its behaviour.

One server for the file (~1 min to start). Two tiny adapters trained on different tasks give
different greedy outputs for the same prompts; a request naming adapter A must get A's
outputs (as computed locally with HF + peft), not B's and not the base model's.
"""

from __future__ import annotations

import os

import pytest

from common.server import vllm_available

pytestmark = [
    pytest.mark.vllm,
    pytest.mark.skipif(
        not vllm_available(), reason="vLLM venv .venvs/vllm is absent (make setup-vllm)"
    ),
]


@pytest.fixture(scope="module")
def two_adapters(tiny_gpt: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    from week3_finetune_lora import data, sft

    runs = tmp_path_factory.mktemp("w3vllm")
    old = os.environ.get("IE_RUNS_DIR")
    os.environ["IE_RUNS_DIR"] = str(runs)
    try:
        data.main(data.DataConfig(tasks=("reverse", "sort"), n_train=200, n_test=8))
        out = {}
        for task in ("reverse", "sort"):
            r = sft.main(
                sft.make_config(
                    "tiny",
                    task=task,
                    model=str(tiny_gpt["hf_dir"]),
                    learning_rate=1e-2,
                    eval_base=False,
                )
            )
            out[task] = r["adapter_dir"]
    finally:
        os.environ.pop("IE_RUNS_DIR") if old is None else os.environ.update(IE_RUNS_DIR=old)
    return {"runs": runs, "adapters": out, "hf_dir": str(tiny_gpt["hf_dir"])}


def test_two_adapters_served_with_their_own_behaviour(two_adapters, tmp_path):
    from week2_serving.harness import launch_server
    from week3_finetune_lora.generation import generate_local, generate_served, load_local
    from week3_finetune_lora.multilora import load_runtime_adapter, lora_args, pick_max_rank
    from week3_finetune_lora.rows import read_jsonl

    adapters = two_adapters["adapters"]
    data_dir = two_adapters["runs"] / "week3" / "data"
    prompts = [
        r["prompt"] for t in ("reverse", "sort") for r in read_jsonl(data_dir / t / "test.jsonl")
    ]
    local = {}
    for name, d in adapters.items():
        model, tok = load_local(two_adapters["hf_dir"], d)
        local[name] = generate_local(model, tok, prompts, max_new_tokens=6)
        with model.disable_adapter():
            local["base"] = generate_local(model, tok, prompts, max_new_tokens=6)
    # The test means something only if the two adapters really behave differently.
    assert local["reverse"] != local["sort"]

    rank = pick_max_rank(adapters, None)
    server = launch_server(
        "vllm",
        two_adapters["hf_dir"],
        extra=lora_args({"reverse": adapters["reverse"]}, rank, max_loras=2),
        max_model_len=128,
        log_dir=tmp_path,
        served_name="base",
    )
    server.env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    with server:
        # "sort" is loaded into the running server, the way a new adapter is rolled out.
        loaded = load_runtime_adapter(server.url, "sort", adapters["sort"], prompts[0])
        assert loaded["listed"]
        served = {
            n: generate_served(server.url, n, prompts, 6) for n in ("reverse", "sort", "base")
        }
    for name in ("reverse", "sort", "base"):
        same = sum(a.strip() == b.strip() for a, b in zip(served[name], local[name]))
        assert same >= len(prompts) - 1, (name, served[name], local[name])  # fp32 both sides
    assert served["reverse"] != served["sort"]
