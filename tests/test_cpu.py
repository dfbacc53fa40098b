"""CPU capabilities and the serving dtype decided from them, for three kinds of x86 CPU.

The capabilities are passed in (parsed from fake /proc/cpuinfo text), so every branch runs on
whatever machine runs the tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.cpu import CpuCaps, cpu_caps, model_quantization, parse_cpuinfo, vllm_cpu_dtype
from common.server import vllm_dtype_args, vllm_server
from week2_serving.quant.variants import VARIANTS, compared_with, serve_dtype

BASE = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx fma"
CPUINFO = {
    # Intel Xeon Sapphire Rapids: AVX-512 with BF16, and AMX tiles
    "intel-amx": "processor : 0\nmodel name : Intel(R) Xeon(R) Platinum 8480+\n"
    f"flags : {BASE} avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"
    "processor : 1\nmodel name : Intel(R) Xeon(R) Platinum 8480+\nflags : avx2\n",
    # AMD EPYC (Zen 4): AVX-512 with BF16, no AMX
    "amd-avx512": f"model name : AMD EPYC 9R14\nflags : {BASE} avx2 avx512f avx512_bf16\n",
    # an older or smaller CPU: AVX2 only
    "avx2-only": f"model name : Intel(R) Core(TM) i7-8700\nflags : {BASE} avx2\n",
}


@pytest.fixture(params=list(CPUINFO))
def kind(request) -> str:
    return request.param


def caps_of(kind: str) -> CpuCaps:
    return parse_cpuinfo(CPUINFO[kind])


def test_parse_cpuinfo_reads_model_and_the_first_processors_flags():
    intel, amd, old = (caps_of(k) for k in CPUINFO)
    assert intel.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert (intel.amx, intel.avx512_bf16, intel.avx512) == (True, True, True)
    assert (amd.amx, amd.avx512_bf16, amd.avx512) == (False, True, True)
    assert (old.amx, old.avx512_bf16, old.avx512) == (False, False, False)
    assert [c.isa for c in (intel, amd, old)] == ["amx", "avx512_bf16", "avx2"]
    assert parse_cpuinfo("").isa == "baseline" and parse_cpuinfo("").model == "unknown"
    d = intel.to_dict()
    assert d["flags"]["amx_tile"] is True and d["flags"]["avx512f"] is True
    assert json.loads(json.dumps(d)) == d


def test_this_machines_caps_are_read():
    caps = cpu_caps()
    assert isinstance(caps.flags, frozenset) and caps.model


# what vLLM 0.32's CPU build needs: AMX int8 GEMM takes 16-bit activations, oneDNN's takes fp32
EXPECTED = {
    "intel-amx": {None: "float32", "int8-w8a8": "bfloat16", "awq": "bfloat16"},
    "amd-avx512": {None: "float32", "int8-w8a8": "float32", "awq": "bfloat16"},
    "avx2-only": {None: "float32", "int8-w8a8": "float32", "awq": "bfloat16"},
}


def test_vllm_cpu_dtype_per_cpu_and_quantization(kind):
    for quant, dtype in EXPECTED[kind].items():
        assert vllm_cpu_dtype(quant, caps_of(kind)) == dtype, (kind, quant)
    assert vllm_cpu_dtype("gptq", caps_of(kind)) == "bfloat16"  # other weight-only formats


def _model(folder: Path, quantization: dict | None) -> Path:
    folder.mkdir(parents=True)
    cfg = {"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 128}
    if quantization:
        cfg["quantization_config"] = quantization
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


W8A8 = {
    "quant_method": "compressed-tensors",
    "config_groups": {
        "group_0": {
            "weights": {"num_bits": 8, "type": "int", "symmetric": True},
            "input_activations": {"num_bits": 8, "type": "int", "dynamic": True},
        }
    },
}
W4A16 = {
    "quant_method": "compressed-tensors",
    "config_groups": {"group_0": {"weights": {"num_bits": 4, "type": "int"}}},
}


def test_model_quantization_reads_the_checkpoint(tmp_path):
    assert model_quantization(_model(tmp_path / "plain", None)) is None
    assert model_quantization(_model(tmp_path / "w8a8", W8A8)) == "int8-w8a8"
    assert model_quantization(_model(tmp_path / "w4a16", W4A16)) == "compressed-tensors"
    assert model_quantization(_model(tmp_path / "awq", {"quant_method": "AWQ"})) == "awq"
    assert model_quantization(tmp_path / "missing") is None  # a hub id, say


def test_vllm_server_command_carries_the_decided_dtype(tmp_path, kind):
    w8a8 = _model(tmp_path / "w8a8", W8A8)
    plain = _model(tmp_path / "plain", None)
    caps = caps_of(kind)
    for model, quant in ((w8a8, "int8-w8a8"), (plain, None)):
        args = vllm_dtype_args(model, [], caps, cuda=False)
        assert args == ["--dtype", EXPECTED[kind][quant]]
    # the caller's choice wins, and a GPU keeps vLLM's own 'auto'
    assert vllm_dtype_args(w8a8, ["--dtype", "float16"], caps, cuda=False) == []
    assert vllm_dtype_args(w8a8, ["--dtype=float16"], caps, cuda=False) == []
    assert vllm_dtype_args(w8a8, [], caps, cuda=True) == []


def test_vllm_server_builds_its_command_with_the_dtype(tmp_path, monkeypatch):
    monkeypatch.setattr("common.server.vllm_available", lambda: True)
    w8a8 = _model(tmp_path / "w8a8", W8A8)
    srv = vllm_server(w8a8, 1, tmp_path / "log", 128, caps=caps_of("intel-amx"), cuda=False)
    i = srv.cmd.index("--dtype")
    assert srv.cmd[i + 1] == "bfloat16" and srv.cmd.count("--dtype") == 1
    srv = vllm_server(
        w8a8, 1, tmp_path / "log", 128, ["--dtype", "float16"], caps=caps_of("intel-amx")
    )
    assert srv.cmd[srv.cmd.index("--dtype") + 1] == "float16" and srv.cmd.count("--dtype") == 1


def test_quality_variants_are_served_at_the_decided_dtype(kind):
    caps = caps_of(kind)
    got = {v: serve_dtype(v, caps) for v in VARIANTS}
    assert got == {
        "fp32": "float32",
        "bf16": "bfloat16",
        "int8-w8a8": EXPECTED[kind]["int8-w8a8"],
        "int4-awq": "bfloat16",
    }
    assert serve_dtype("int8-w8a8", caps, cuda=True) == "auto"


def test_quality_compares_like_with_like():
    ok = {"fp32", "bf16", "int8-w8a8", "int4-awq"}
    cw = compared_with
    assert cw("int4-awq", "bfloat16", ok) == "bf16"
    assert cw("int8-w8a8", "bfloat16", ok) == "bf16"  # an AMX machine
    assert cw("int8-w8a8", "float32", ok) == "fp32"  # elsewhere
    assert cw("bf16", "bfloat16", ok) == "fp32"  # the control itself: against the reference
    assert cw("int4-awq", "bfloat16", ok - {"bf16"}) == "fp32"  # no control ran: fp32
    assert cw("int4-awq", "auto", ok) == "fp32"
