"""The inference-arithmetic lab: its formulas against hand-derived numbers, the lesson's
answers against the lab, the published parameter counts, the CLI end to end."""

from __future__ import annotations

import json
import math
import re
import stat

import pytest

from tests.conftest import REPO
from week2_serving.arith.__main__ import ArithConfig, main
from week2_serving.arith.cpu_bandwidth import copy_bandwidth
from week2_serving.arith.hardware import accelerators, get_accelerator
from week2_serving.arith.model import ModelShape, load_shape, shipped_models
from week2_serving.arith.roofline import (
    cost_per_million_tokens,
    decode_step,
    max_sequences,
    prefill_step,
    utilisation,
)

H100 = get_accelerator("h100-sxm")


def test_hand_derived_kv_and_capacity() -> None:
    """Numbers worked out by hand from the published configs, not from the lab."""
    llama8 = load_shape("llama-3.1-8b")
    assert llama8.kv_bytes_per_token("bfloat16") == 2 * 32 * 8 * 128 * 2 == 131072
    assert load_shape("qwen2.5-7b").kv_bytes_per_token("bfloat16") == 2 * 28 * 4 * 128 * 2
    # 90% of 80e9 bytes, minus 8,030,261,248 weights x 2 bytes, over 8192 tokens x 131072 bytes
    assert max_sequences(llama8, H100, 8192) == int(
        (0.9 * 80e9 - 2 * 8030261248) // (8192 * 131072)
    )
    assert load_shape("llama-3.1-70b").kv_bytes_per_token(tp=4) == 2 * 80 * 2 * 128 * 2
    # batch-1 decode at 8k: weights + one sequence's KV, at 3.35 TB/s
    step = decode_step(llama8, 1, 8192)
    assert step.bound(H100) == "memory"
    assert step.tokens_per_s(H100) == pytest.approx(3.35e12 / (2 * 8030261248 + 8192 * 131072))
    assert prefill_step(llama8, 2048).bound(H100) == "compute"
    assert cost_per_million_tokens(3.0, 2000) == pytest.approx(3.0 / (2000 * 3600) * 1e6)


# published parameter counts (model cards / `sum(p.numel())` of the released weights)
PUBLISHED_PARAMS = {
    "gpt2": 124_439_808,
    "llama-3.1-8b": 8_030_261_248,
    "llama-3.1-70b": 70_553_706_496,
    "qwen2.5-0.5b": 494_032_768,
    "qwen2.5-7b": 7_615_616_512,
    "smollm2-135m": 134_515_008,
}


def test_parameter_counts_match_the_published() -> None:
    assert set(shipped_models()) == set(PUBLISHED_PARAMS)
    for name, n in PUBLISHED_PARAMS.items():
        assert load_shape(name).params() == n, name


def lesson_answers() -> dict[str, float]:
    text = (REPO / "week2_serving/arith/LESSON.md").read_text().split("## Answers", 1)[1]
    found = re.findall(r"^- (E\d+): \*\*([\d,.]+)\*\*", text, flags=re.M)
    return {k: float(v.replace(",", "")) for k, v in found}


def lab_answers() -> dict[str, float]:
    m8, m70 = load_shape("llama-3.1-8b"), load_shape("llama-3.1-70b")
    return {
        "E1": m8.kv_bytes_per_token("bfloat16"),
        "E2": load_shape("qwen2.5-7b").kv_bytes_per_token("bfloat16"),
        "E3": max_sequences(m8, H100, 8192, kv_dtype="fp8"),
        "E4": m8.flops_per_token(8192) / (8192 * m8.kv_bytes_per_token()),
        "E5": 100 * utilisation(m8, H100, 2000, 64, 1024)["mbu"],
        "E6": cost_per_million_tokens(3.0, 2000),
        "E7": m70.weight_bytes("int4") / 2 / 1e9,
        "E8": load_shape("gpt2").params(),
    }


def test_lesson_answers_are_what_the_lab_computes() -> None:
    written, computed = lesson_answers(), lab_answers()
    assert set(written) == set(computed), "every exercise has one answer line"
    for k, v in computed.items():
        assert written[k] == pytest.approx(v, rel=0.01), f"{k}: lesson {written[k]}, lab {v}"
    # E4 is also the limit of the decode step itself as the batch grows
    step = decode_step(load_shape("llama-3.1-8b"), 10**7, 8192)
    assert step.intensity == pytest.approx(computed["E4"], rel=1e-3)


def test_config_names_gqa_and_bad_input(tmp_path) -> None:
    cfg = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
           "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 300}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    m = load_shape(str(tmp_path))
    assert m.head_dim == 16 and m.kv_bytes_per_token("float32") == 2 * 2 * 2 * 16 * 4
    with pytest.raises(ValueError, match="num_hidden_layers"):
        ModelShape.from_hf_config({"hidden_size": 8})
    with pytest.raises(ValueError, match="multiple of kv_heads"):
        ModelShape.from_hf_config({**cfg, "num_key_value_heads": 3})
    for bad in (0, -1, True, math.nan):
        with pytest.raises(ValueError):
            decode_step(m, bad, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown accelerator"):
        get_accelerator("tpu-v9")
    with pytest.raises(ValueError, match="no config"):
        load_shape(str(tmp_path / "missing.json"))
    with pytest.raises(SystemExit, match="arith: no config"):
        main(ArithConfig(config=str(tmp_path / "missing.json")))
    for bad in ({"context": 0}, {"batch": []}, {"memory_fraction": 1.5}, {"dtype": "fp3"}):
        with pytest.raises(ValueError):
            ArithConfig(**bad)  # type: ignore[arg-type]


def test_every_accelerator_row_has_a_source_and_date() -> None:
    for key, acc in accelerators().items():
        assert acc.source and re.fullmatch(r"\d{4}-\d{2}-\d{2}", acc.recorded), key
        assert 1 < acc.ridge < 10_000, key
    assert "ESTIMATE" in accelerators()["cpu-2core"].source


def test_cli_writes_results_and_plot(tmp_path) -> None:
    cfg = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
           "intermediate_size": 64, "vocab_size": 256, "tie_word_embeddings": True}  # fmt: skip
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "arith"
    r = main(ArithConfig(config=str(tmp_path / "model"), accelerator="cpu-2core",
                         dtype="float32", context=64, prompt=32, batch=[1, 4],
                         tokens_per_s=50.0, out=out))  # fmt: skip
    assert (out / "roofline.png").stat().st_size > 1000
    saved = json.loads((out / "results.json").read_text())
    assert stat.S_IMODE((out / "results.json").stat().st_mode) == 0o644
    assert saved["params"] == r["params"] > 0 and "environment" in saved
    assert saved["measured"]["mbu"] > 0 and saved["decode"]["1"]["bound"] == "memory"


def test_copy_bandwidth_is_a_positive_rate() -> None:
    r = copy_bandwidth(1 << 16, repeats=2, min_seconds=0.002)
    assert 1e8 < r["bytes_per_s"] < 1e13 and r["min"] <= r["median"] <= r["bytes_per_s"]
