"""Quantized variants: the registry, the orchestration (group size, calibration windows,
failures recorded), the workers' imports, and, with the venvs present, the tiny model quantized
to INT8 W8A8 and INT4 AWQ, served by real vLLM, agreeing with fp32.
(The quality metrics and the report table: tests/test_week2_quant_quality.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from common.cli import build_parser
from common.cpu import model_quantization, parse_cpuinfo
from common.server import VLLM_PYTHON, vllm_available
from tests.conftest import REPO
from week2_serving.quant import quality, quantize, shared
from week2_serving.quant.metrics import greedy_agreement, perplexity
from week2_serving.quant.quantize import QuantizeConfig
from week2_serving.quant.shared import token_windows
from week2_serving.quant.variants import (
    VARIANTS,
    check_names,
    pick_group_size,
    quantized_names,
    serve_args,
)

# ---- the registry ----


def test_registry_drives_both_command_lines():
    assert quantized_names() == ["int8-w8a8", "int4-awq"]
    assert QuantizeConfig().variants == quantized_names()
    assert quality.QualityConfig().variants == list(VARIANTS)
    help_text = " ".join(build_parser(QuantizeConfig).format_help().split())
    assert "['int8-w8a8', 'int4-awq']" in help_text and "(default: int8-w8a8 int4-awq)" in help_text
    for v in VARIANTS.values():
        assert v.label and (v.worker is None) == (v.make_target is None) == (v.python is None)


def test_variants_flag_takes_spaces_or_commas():
    assert quantize.parse_args(["--variants", "int4-awq"]).variants == ["int4-awq"]
    both = quality.parse_args(["--variants", "fp32,int4-awq", "bf16"]).variants
    assert both == ["fp32", "int4-awq", "bf16"]
    assert quality.parse_args(["--num-prompts", "8"]).num_prompts == 8
    cfg = quantize.parse_args(["--force", "--group-size", "32", "--strict", "--num-calib", "4"])
    assert (cfg.force, cfg.group_size, cfg.strict, cfg.num_calib) == (True, 32, True, 4)


def test_unknown_variant_is_rejected_with_the_tables_names():
    with pytest.raises(ValueError, match=r"int3.*'int8-w8a8', 'int4-awq'"):
        QuantizeConfig(variants=["int3"])
    with pytest.raises(ValueError, match="not made by a quantizer"):
        QuantizeConfig(variants=["fp32"])  # served, but nothing to make
    with pytest.raises(ValueError, match=r"int3.*'fp32', 'bf16'"):
        quality.QualityConfig(variants=["fp32", "int3"])
    with pytest.raises(ValueError, match="reference 'fp32'"):
        quality.QualityConfig(variants=["int4-awq"])
    with pytest.raises(ValueError, match=r"\['a', 'b'\]"):  # commas split
        check_names(["a,b"])


def test_serve_args_from_the_registry():
    amx = parse_cpuinfo("model name : Xeon\nflags : avx2 avx512f amx_tile amx_bf16")
    assert serve_args("fp32", amx) == ["--dtype", "float32"]
    assert serve_args("int8-w8a8", amx) == ["--dtype", "bfloat16"]
    assert serve_args("int4-awq", amx, cuda=True) == []  # vLLM's 'auto'


def test_a_new_variant_is_one_entry(monkeypatch, tmp_path):
    """A made-up variant added to the table alone is accepted and run by its worker."""
    new = replace(VARIANTS["int8-w8a8"], name="int2-x", python=tmp_path / "none" / "python")
    monkeypatch.setitem(VARIANTS, "int2-x", new)
    model = fake_model(tmp_path / "model")
    cfg = QuantizeConfig(
        model=str(model), data=str(tmp_path), out=str(tmp_path / "q"), variants=["int2-x"]
    )
    rec = quantize.main(cfg)["variants"]["int2-x"]
    assert rec["status"] == "error" and "make setup-quant" in rec["error"]


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
    w8a8, awq = VARIANTS["int8-w8a8"], VARIANTS["int4-awq"]
    monkeypatch.setitem(VARIANTS, "int8-w8a8", replace(w8a8, python=tmp_path / "no" / "python"))
    no_module = replace(awq, python=Path(sys.executable), worker="week2_serving.no_such_module")
    monkeypatch.setitem(VARIANTS, "int4-awq", no_module)
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
    awq = replace(VARIANTS["int4-awq"], python=Path(sys.executable), worker="unused")
    monkeypatch.setitem(VARIANTS, "int4-awq", awq)
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
    shared.finish_variant(folder, model, {"quantize_seconds": 1.0})
    assert shared.is_done(folder, model)
    (model / "model.safetensors").write_bytes(b"\1" * 2000)  # week 1 retrained
    assert not shared.is_done(folder, model)


# ---- the workers run in other venvs: they import only the quant library module ----

WORKER_IMPORTS = {
    "week2_serving",
    "week2_serving.quant",
    "week2_serving.quant.shared",
    "common",
    "common.cli",
    "common.hub",
    "common.results",
}


@pytest.mark.parametrize("worker", ["awq_worker", "w8a8_worker"])
def test_workers_import_only_the_quant_library(worker):
    code = (
        f"import sys, week2_serving.quant.{worker}; "
        "print(*(m for m in sys.modules if m.split('.')[0] in ('common', 'week2_serving')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    loaded = set(out.stdout.split()) - {f"week2_serving.quant.{worker}"}
    assert loaded <= WORKER_IMPORTS, sorted(loaded - WORKER_IMPORTS)


# ---- real quantization and real vLLM on the tiny model ----


def _installed(python, dist: str) -> bool:
    return python.exists() and any(
        python.parent.parent.glob(f"lib/python3*/site-packages/{dist}-*")
    )


QUANT_PYTHON = VARIANTS["int8-w8a8"].python
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
    assert model_quantization(Path(cfg.out) / variant) == VARIANTS[variant].quantization

    windows = token_windows(cfg.data, "val", 8, 64)
    prompts = [w[:16] for w in windows]
    ref = quality.evaluate_server(vllm_tiny.url, "tiny", windows, prompts, 16)
    with launch(
        "vllm",
        Path(cfg.out) / variant,
        extra=[*serve_args(variant), *quality.EAGER],
        max_model_len=128,
        served_name="q",
    ) as srv:
        got = quality.evaluate_server(srv.url, "q", windows, prompts, 16)
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
    if not python.exists():
        pytest.skip(f"{python} is absent (make setup-quant / setup-vllm)")
    out = subprocess.run(
        [str(python), "-m", module, "--help"], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout
