"""The report's "which roof applies" section: the arithmetic lab's cache-fit test decides
whether the cache or DRAM bandwidth is the memory roof of the served model's decode."""

from __future__ import annotations

import json

import pytest

from common.results import write_json_atomic
from tests.test_week2_report import cell
from week2_serving.arith.hardware import get_accelerator
from week2_serving.arith.model import load_shape
from week2_serving.arith.roofline import decode_step
from week2_serving.harness import report, report_roof

LLAMA = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256,
         "torch_dtype": "float32"}  # fmt: skip


@pytest.fixture
def model(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA))
    return folder


def test_which_roof_follows_the_cache_fit(model):
    m = load_shape(str(model))
    w = m.weight_bytes("float32")
    assert report_roof.which_roof(m, "float32", int(w) + 1) == (True, "cache")
    assert report_roof.which_roof(m, "float32", int(w) - 1) == (False, "DRAM")
    assert report_roof.which_roof(m, "bfloat16", int(w) - 1) == (True, "cache")  # half the bytes
    assert report_roof.which_roof(m, "float32", 0) == (None, "DRAM")  # size unknown: say so


def test_section_states_the_fit_and_the_applicable_ceiling(model):
    cells = [
        cell("default", "c1", 1, 90, 20, 9, model),
        cell("default", "c4", 4, 300, 30, 12, model),
    ]
    cells[1]["server"]["dtype"] = "bfloat16"  # the engine's dtype beats the checkpoint's
    m = load_shape(str(model))
    big = report_roof.roof_section(
        cells, ["default"], dram_gbs=5.0, cache_gbs=50.0, llc_bytes=2**30
    )
    assert "| yes | cache, 50.0 GB/s | c4 (batch 4) | 300 |" in big
    step = decode_step(m, 4, 16 + 32, "bfloat16")  # 16 prompt tokens + half of 64 generated
    ceiling = step.tokens_per_s(get_accelerator("cpu-2core").with_bandwidth(50e9, "test"))
    assert f"| {ceiling:.0f} ({step.bound(get_accelerator('cpu-2core'))}-bound) |" in big
    small = report_roof.roof_section(
        cells, ["default"], dram_gbs=5.0, cache_gbs=50.0, llc_bytes=1024
    )
    assert "| no | DRAM, 5.0 GB/s |" in small and "1.0 KiB" not in small
    unknown = report_roof.roof_section(cells, ["default"], 5.0, 50.0, llc_bytes=0)
    assert "unknown (sysfs does not say)" in unknown and "| unknown | DRAM, 5.0 GB/s |" in unknown
    cells_no_config = [cell("default", "c1", 1, 90, 20, 9, model / "missing")]
    assert report_roof.roof_section(cells_no_config, ["default"], 5.0, 50.0, 2**30) is None


def test_the_report_carries_the_section(model, tmp_path, monkeypatch):
    monkeypatch.setattr(report_roof, "cache_sizes", lambda: {"L2": 2**20, "L3": 2**25})
    sweep = tmp_path / "sweep-roof"
    c = cell("default", "c1", 1, 90, 20, 9, model)
    write_json_atomic(sweep / "default" / "c1" / "results.json", c)
    text = report.build(sweep, usd_per_hour=1.0, bandwidth_gbs=7.0).read_text()
    assert "### Which roof applies: cache or DRAM" in text
    assert "Last-level cache: 32.0 MiB. DRAM bandwidth 7.0 GB/s" in text
    mb = load_shape(str(model)).weight_bytes("float32") / 1e6
    assert f"| default | {mb:.1f} MB (float32) | yes | cache," in text
