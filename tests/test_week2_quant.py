"""Quantized variants: the quality metrics on hand-computed inputs, the orchestration (group size,
calibration windows, failures recorded), the report table, and — with the venvs present — the
tiny model quantized to INT8 W8A8 and INT4 AWQ, served by real vLLM, agreeing with fp32."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from common.cpu import model_quantization
from common.results import write_json_atomic
from common.server import VLLM_PYTHON, vllm_available
from tests.test_week2_report import cell
from week2_serving import report
from week2_serving.quant import quality as quantize_quality
from week2_serving.quant import quantize
from week2_serving.quant.quality import (
    greedy_agreement,
    perplexity,
    prompt_token_logprobs,
    prompt_top1,
)
from week2_serving.quant.quantize import QuantizeConfig, pick_group_size, token_windows

# ---- metrics on known inputs ----


def test_perplexity_hand_computed():
    # two tokens with p = 1/2 and 1/8 -> mean NLL = (ln 2 + ln 8) / 2 = 2 ln 2 -> perplexity 4
    res = perplexity([[math.log(0.5)], [math.log(0.125)]])
    assert res["perplexity"] == pytest.approx(4.0)
    assert res["mean_nll"] == pytest.approx(2 * math.log(2))
    assert res["tokens"] == 2
    # a uniform model over V tokens has perplexity V
    assert perplexity([[math.log(1 / 2048)] * 10])["perplexity"] == pytest.approx(2048)


@pytest.mark.parametrize("bad", [[], [[]], [[0.5]], [[float("nan")]]])
def test_perplexity_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        perplexity(bad)


def test_greedy_agreement_hand_computed():
    ref = [[1, 2, 3, 4], [5, 6, 7, 8]]
    other = [[1, 2, 9, 4], [5, 6, 7, 8]]
    res = greedy_agreement(ref, other)
    assert res["token_agreement"] == pytest.approx(7 / 8)
    assert res["exact_match"] == pytest.approx(1 / 2)
    assert res["mean_prefix_match"] == pytest.approx((2 / 4 + 4 / 4) / 2)
    assert greedy_agreement(ref, ref)["token_agreement"] == 1.0
    assert greedy_agreement(ref, [[0, 0, 0, 0], [0, 0, 0, 0]])["mean_prefix_match"] == 0.0


def test_greedy_agreement_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="3 tokens vs 4"):
        greedy_agreement([[1, 2, 3, 4]], [[1, 2, 3]])
    with pytest.raises(ValueError, match="same number"):
        greedy_agreement([[1]], [[1], [2]])


# vLLM's prompt_logprobs for prompt [5, 6, 7] with prompt_logprobs=1: the actual token and the
# rank-1 token per position (the shape of a real vLLM 0.32 CPU response)
PROMPT_LOGPROBS = [
    None,
    {
        "6": {"logprob": -11.5, "rank": 1138, "decoded_token": "&"},
        "42": {"logprob": -0.7, "rank": 1, "decoded_token": "x"},
    },
    {"7": {"logprob": -0.25, "rank": 1, "decoded_token": "'"}},
]


def test_prompt_logprobs_and_top1_from_vllm_response():
    assert prompt_token_logprobs([5, 6, 7], PROMPT_LOGPROBS) == [-11.5, -0.25]
    assert prompt_top1(PROMPT_LOGPROBS) == [42, 7]
    with pytest.raises(ValueError, match="no entry for the prompt token 9"):
        prompt_token_logprobs([5, 9, 7], PROMPT_LOGPROBS)
    with pytest.raises(ValueError, match="3 prompt_logprobs entries for 2"):
        prompt_token_logprobs([5, 6], PROMPT_LOGPROBS)


# ---- orchestration ----


def test_group_size_divides_every_linear_input():
    # the week 1 model: 704 = 11 * 64, so 128 does not tile the MLP's down_proj input
    assert pick_group_size({"hidden_size": 256, "intermediate_size": 704}) == 64
    assert pick_group_size({"hidden_size": 256, "intermediate_size": 1024}) == 128
    assert pick_group_size({"hidden_size": 64, "intermediate_size": 192}) == 64
    with pytest.raises(ValueError, match=r"\[100, 200\]"):
        pick_group_size({"hidden_size": 100, "intermediate_size": 200})
    with pytest.raises(ValueError, match="intermediate_size"):
        pick_group_size({"hidden_size": 64})


def test_awq_clip_search_only_where_output_widths_tile():
    from week2_serving.quant.awq_worker import clip_supported

    week1 = {"hidden_size": 256, "intermediate_size": 704, "num_attention_heads": 4}
    assert clip_supported({**week1, "num_key_value_heads": 2, "head_dim": 64})  # v_proj 128
    tiny = {"hidden_size": 64, "intermediate_size": 192, "num_attention_heads": 2}
    assert not clip_supported({**tiny, "num_key_value_heads": 1})  # v_proj 32


def test_token_windows(tmp_path):
    import numpy as np

    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "val.bin")
    first = token_windows(tmp_path, "val", 3, 100)
    assert first == [list(range(0, 100)), list(range(100, 200)), list(range(200, 300))]
    seeded = token_windows(tmp_path, "val", 5, 100, seed=1)
    assert seeded == token_windows(tmp_path, "val", 5, 100, seed=1)  # reproducible
    starts = [w[0] for w in seeded]
    assert len(set(starts)) == 5 and all(s % 100 == 0 for s in starts)  # no overlap
    assert len(token_windows(tmp_path, "val", 50, 100)) == 10  # capped at what exists
    with pytest.raises(FileNotFoundError, match="make week1"):
        token_windows(tmp_path, "train", 1, 10)


def test_unknown_variant_is_rejected():
    with pytest.raises(ValueError, match="int3"):
        QuantizeConfig(variants=["int3"])
    with pytest.raises(ValueError, match="int3"):
        quantize_quality.QualityConfig(variants=["fp32", "int3"])
    with pytest.raises(ValueError, match="reference 'fp32'"):
        quantize_quality.QualityConfig(variants=["int4-awq"])


def fake_model(folder):
    folder.mkdir(parents=True)
    config = {
        "hidden_size": 64,
        "intermediate_size": 192,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes(b"\0" * 1000)
    return folder


def test_failed_variants_are_recorded_not_raised(tmp_path, monkeypatch):
    model = fake_model(tmp_path / "model")
    monkeypatch.setattr(
        quantize,
        "VARIANTS",
        {
            "int8-w8a8": (tmp_path / "no-venv" / "python", "x", "setup-quant"),
            "int4-awq": (Path(sys.executable), "week2_serving.no_such_module", "setup-awq"),
        },
    )
    res = quantize.main(
        QuantizeConfig(model=str(model), data=str(tmp_path), out=str(tmp_path / "q"))
    )
    v = res["variants"]
    assert v["fp32"]["weight_bytes"] == 1000
    assert v["int8-w8a8"]["status"] == "error" and "make setup-quant" in v["int8-w8a8"]["error"]
    assert v["int4-awq"]["status"] == "error"
    assert "no_such_module" in v["int4-awq"]["error"]  # the log tail is in the error
    saved = json.loads((tmp_path / "q" / "results.json").read_text())
    assert saved["variants"]["int4-awq"]["status"] == "error"


def test_bad_awq_group_size_is_recorded_with_the_widths(tmp_path, monkeypatch):
    model = fake_model(tmp_path / "model")
    monkeypatch.setitem(
        quantize.VARIANTS, "int4-awq", (Path(sys.executable), "unused", "setup-awq")
    )
    cfg = QuantizeConfig(
        model=str(model), data=str(tmp_path), out=str(tmp_path / "q"), variants=["int4-awq"]
    )
    cfg.group_size = 128
    err = quantize.main(cfg)["variants"]["int4-awq"]["error"]
    assert "group size 128" in err and "[64, 192]" in err


def test_finished_variant_is_kept_until_the_source_changes(tmp_path):
    model = fake_model(tmp_path / "model")
    folder = tmp_path / "q" / "int8-w8a8"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    quantize.finish_variant(folder, model, {"quantize_seconds": 1.0})
    assert quantize.is_done(folder, model)
    (model / "model.safetensors").write_bytes(b"\1" * 2000)  # week 1 retrained
    assert not quantize.is_done(folder, model)


def test_quality_records_servers_that_fail_and_variants_never_made(tmp_path, monkeypatch):
    import numpy as np

    from common.server import ServerError

    model = fake_model(tmp_path / "model")
    np.arange(2000, dtype=np.uint16).tofile(tmp_path / "val.bin")
    qdir = tmp_path / "q"
    write_json_atomic(
        qdir / "results.json",
        {"variants": {"int4-awq": {"status": "error", "error": "AWQ exploded"}}},
    )

    def failing_launch(*args, **kwargs):
        raise ServerError("server exited with code 1 before it was ready")

    monkeypatch.setattr(quantize_quality, "launch", failing_launch)
    cfg = quantize_quality.QualityConfig(
        variants=["fp32", "int4-awq"], model=str(model), quantized=str(qdir), data=str(tmp_path)
    )
    rows = quantize_quality.main(cfg)["variants"]
    assert rows["fp32"]["status"] == "error" and "before it was ready" in rows["fp32"]["error"]
    assert rows["int4-awq"]["error"] == "not produced: AWQ exploded"
    assert (tmp_path / "runs" / "week2" / "quant-quality" / "results.json").is_file()


# ---- the report ----


def test_quality_table_in_the_sweep_report(tmp_path):
    model = fake_model(tmp_path / "model")
    week = tmp_path / "week2"
    sweep = week / "sweep-x"
    cells = [
        cell("default", "c1", 1, 100, 20, 9, model),
        cell("int4-awq", "c1", 1, 150, 20, 6, model),
    ]
    for c in cells:
        write_json_atomic(sweep / c["server_name"] / c["load_name"] / "results.json", c)
    write_json_atomic(
        sweep / "sweep.json",
        {"config": {"servers": [{"name": "default"}, {"name": "int4-awq"}], "engine": "vllm"}},
    )
    g = {"token_agreement": 0.5, "exact_match": 0.0, "mean_prefix_match": 0.25}
    quality = {
        "reference": "fp32",
        "variants": {
            "fp32": {"status": "ok", "dtype": "float32", "perplexity": 10.0, "weight_bytes": 4e6},
            "bf16": {"status": "ok", "dtype": "bfloat16", "perplexity": 10.0 * 1.1 / 1.05},
            "int4-awq": {
                "status": "ok",
                "dtype": "bfloat16",
                "compared_with": "bf16",
                "perplexity": 11.0,
                "weight_bytes": 1e6,
                "quantize_seconds": 42,
                "greedy": g,
                "top1_agreement": 0.9,
                "greedy_self_agreement": 1.0,
            },
            "int8-w8a8": {"status": "error", "error": "not produced: boom\nmore"},
        },
        "config": {"eval_len": 256, "num_prompts": 32, "max_tokens": 64},
        "eval": {"windows": 48},
    }
    write_json_atomic(week / "quant-quality" / "results.json", quality)
    text = report.build(sweep, bandwidth_gbs=10.0).read_text()
    assert "## Quantization: quality beside speed" in text
    # like with like: the bf16 variant is compared with the bf16 control, not with fp32
    row = "| int4-awq | bfloat16 | 1.0 | 42 | 11.00 (+5.00% vs bf16) | 0.500 | 0.250 | 0.900 |"
    assert row in text
    assert "| fp32 | float32 | 4.0 | — | 10.00 (reference)" in text and "| 100 |" in text
    assert "failed: not produced: boom |" in text
    assert "| int4-awq | c1 | +50% |" in text  # the variant is a lever in the lever table


def test_no_quality_section_without_results(tmp_path):
    assert quantize_quality.report_section(tmp_path, [], None) is None


# ---- real quantization and real vLLM on the tiny model ----


def _installed(python, dist: str) -> bool:
    return python.exists() and any(
        python.parent.parent.glob(f"lib/python3*/site-packages/{dist}-*")
    )


QUANT_PYTHON = quantize.VARIANTS["int8-w8a8"][0]
READY = {
    "int8-w8a8": (
        _installed(QUANT_PYTHON, "llmcompressor"),
        ".venvs/quant with llm-compressor is absent (make setup-quant)",
    ),
    "int4-awq": (
        vllm_available() and _installed(VLLM_PYTHON, "autoawq"),
        "autoawq is not in .venvs/vllm (make setup-awq)",
    ),
}


@pytest.fixture(scope="module")
def quantized_tiny(tiny_gpt, tmp_path_factory):
    variants = [v for v, (ok, _) in READY.items() if ok]
    if not variants:
        pytest.skip("neither quantization venv is present (make setup-quant setup-awq)")
    cfg = QuantizeConfig(
        model=str(tiny_gpt["hf_dir"]),
        data=str(tiny_gpt["runs"] / "week1" / "data-bpe"),
        out=str(tmp_path_factory.mktemp("quantized")),
        variants=variants,
        num_calib=8,  # 8 windows of 64 tokens: enough to exercise calibration, seconds to run
        calib_len=64,
    )
    return quantize.main(cfg), cfg


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.parametrize("variant", list(READY))
def test_quantized_tiny_model_served_by_vllm_agrees_with_fp32(
    variant, quantized_tiny, vllm_tiny, tiny_gpt
):
    ok, reason = READY[variant]
    if not ok:
        pytest.skip(reason)
    from week2_serving.harness.launch import launch

    res, cfg = quantized_tiny
    rec = res["variants"][variant]
    assert rec["status"] == "ok", rec.get("error")
    assert rec["weight_bytes"] < 0.7 * res["variants"]["fp32"]["weight_bytes"]
    config = json.loads((Path(cfg.out) / variant / "config.json").read_text())
    assert "quantization_config" in config
    # the serving dtype is decided from what the checkpoint says it is
    assert model_quantization(Path(cfg.out) / variant) == quantize_quality.VARIANTS[variant][0]

    windows = token_windows(cfg.data, "val", 8, 64)
    prompts = [w[:16] for w in windows]
    ref = quantize_quality.evaluate_server(vllm_tiny.url, "tiny", windows, prompts, 16)
    with launch(
        "vllm",
        Path(cfg.out) / variant,
        extra=["--dtype", quantize_quality.serve_dtype(variant), *quantize_quality.EAGER],
        max_model_len=128,
        served_name="q",
    ) as srv:
        got = quantize_quality.evaluate_server(srv.url, "q", windows, prompts, 16)
    ppl_ref = perplexity(ref["logprobs"])["perplexity"]
    ppl = perplexity(got["logprobs"])["perplexity"]
    top1 = greedy_agreement(ref["top1"], got["top1"])["token_agreement"]
    greedy = greedy_agreement(ref["greedy"], got["greedy"])
    print(f"{variant}: ppl {ppl:.2f} vs fp32 {ppl_ref:.2f}, top-1 {top1:.3f}, greedy {greedy}")
    assert ppl == pytest.approx(ppl_ref, rel=0.05)
    assert top1 >= 0.85
    assert greedy["token_agreement"] >= 0.5


@pytest.mark.parametrize(
    "module, python",
    [
        ("week2_serving.quant.quantize", Path(sys.executable)),
        ("week2_serving.quant.quality", Path(sys.executable)),
        ("week2_serving.quant.w8a8_worker", QUANT_PYTHON),
        ("week2_serving.quant.awq_worker", VLLM_PYTHON),
    ],
)
def test_help(module, python):
    import subprocess

    from tests.conftest import REPO

    if not python.exists():
        pytest.skip(f"{python} is absent (make setup-quant / setup-vllm)")
    out = subprocess.run(
        [str(python), "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
