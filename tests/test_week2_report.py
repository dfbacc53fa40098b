"""The serving report on a synthetic sweep: tables, lever deltas, Pareto front, roofline."""

from __future__ import annotations

import json

import pytest

from common.results import write_json_atomic
from week2_serving.harness import report


def cell(server, load, conc, tput, ttft, tpot, model_dir, dataset="random"):
    return {
        "server_name": server,
        "load_name": load,
        "max_concurrency": conc,
        "num_prompts": 4 * conc,
        "completed": 4 * conc,
        "failed": 0,
        "total_input_tokens": 4 * conc * 16,
        "total_output_tokens": 4 * conc * 64,
        "output_throughput": tput,
        "mean_ttft_ms": ttft,
        "median_ttft_ms": ttft,
        "p99_ttft_ms": 2 * ttft,
        "mean_tpot_ms": tpot,
        "median_tpot_ms": tpot,
        "p99_tpot_ms": 1.5 * tpot,
        "config": {"dataset_name": dataset},
        "server": {"model": str(model_dir)},
        "environment": {"cpu_model": "test CPU", "cpu_count": 2, "gpu_name": None},
    }


def test_report_from_a_synthetic_sweep(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(
            {
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "hidden_size": 64,
                "torch_dtype": "float32",
            }
        )
    )
    (model / "model.safetensors").write_bytes(b"\0" * 1_000_000)
    sweep = tmp_path / "sweep-x"
    data = [
        cell("default", "c1", 1, 100, 20, 9, model),
        cell("default", "c8", 8, 600, 40, 12, model),
        cell("small-batch", "c1", 1, 100, 20, 9, model),
        cell("small-batch", "c8", 8, 300, 400, 10, model),
    ]
    for c in data:
        write_json_atomic(sweep / c["server_name"] / c["load_name"] / "results.json", c)
    write_json_atomic(
        sweep / "sweep.json",
        {
            "config": {
                "engine": "vllm",
                "model": str(model),
                "servers": [{"name": "default"}, {"name": "small-batch"}],
            }
        },
    )
    write_json_atomic(
        sweep / "broken" / "c1" / "error.json", {"error": "server exited with code 1\nmore"}
    )
    path = report.build(sweep, usd_per_hour=3.6, bandwidth_gbs=10.0)
    text = path.read_text()
    assert (
        "| small-batch | c8 | -50% | +900% | -17% | +900% |" in text
    )  # throughput halves, TTFT ×10
    assert "$10.00" in text  # $3.6/h at 100 tok/s = 360k tok/h -> $10 per 1M
    assert "server exited with code 1" in text
    for png in ("throughput_vs_concurrency.png", "latency_vs_load.png", "pareto.png"):
        assert (sweep / png).exists()


def test_roofline_math():
    mb = {"weight_bytes": 1_000_000, "kv_bytes_per_token": 1000}
    c = {
        "max_concurrency": 4,
        "num_prompts": 8,
        "completed": 8,
        "total_input_tokens": 8 * 100,
        "total_output_tokens": 8 * 200,
        "output_throughput": 1000.0,
    }
    r = report.roofline(c, mb, bandwidth_gbs=1.0)
    step = 1_000_000 + 4 * (100 + 100) * 1000  # weights + B · avg context · KV bytes per token
    assert r["bytes_per_step"] == step
    assert r["ceiling_tok_s"] == pytest.approx(4 * 1e9 / step)
    assert r["mbu"] == pytest.approx(1000 / (4 * 1e9 / step))


def test_pareto_front():
    pts = [
        (10, 100, "a"),
        (12, 90, "dominated"),
        (20, 300, "b"),
        (5, 50, "c"),
        (30, 250, "dominated2"),
    ]
    assert [p[2] for p in report.pareto(pts)] == ["c", "a", "b"]


def test_bandwidth_measurement_is_plausible():
    assert 0.5 < report.measure_bandwidth_gbs(size_mb=32, repeats=2) < 5000


def test_empty_sweep_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="run python -m week2_serving.harness.sweep first"):
        report.build(tmp_path)


def test_failed_cells_name_their_server_and_show_the_log(tmp_path):
    """The failed-cells table: server name, what it ran in short, the error's first line; the
    log's last lines once per failed start (not the server's whole config dict)."""
    model = tmp_path / "model"
    sweep = tmp_path / "sweep-x"
    c = cell("default", "c1", 1, 100, 20, 9, model)
    write_json_atomic(sweep / "default" / "c1" / "results.json", c)
    tail = "INFO loading weights\nValueError: int8_scaled_mm: expect A to be bfloat16 | half"
    for load in ("c1", "c8"):  # one failed start records all its cells, with one log
        write_json_atomic(
            sweep / "int8-w8a8" / load / "error.json",
            {
                "server_name": "int8-w8a8",
                "load_name": load,
                "engine": "vllm",
                "model": "/repo/runs/week2/quantized/int8-w8a8",
                "args": ["--max-num-seqs", "4"],
                "error": "server exited with code 1 before it was ready; last lines:\n" + tail,
                "log_tail": tail,
                "cell_hash": "abc",
            },
        )
    legacy = {"server": {"name": "old", "args": ["--x"]}, "error": "boom\ntrace"}
    write_json_atomic(sweep / "old" / "c1" / "error.json", legacy)

    text = report.build(sweep, bandwidth_gbs=10.0).read_text()
    failed = text[text.index("## Failed cells") :]
    assert (
        "| int8-w8a8 | c8 | vllm · int8-w8a8 · --max-num-seqs 4 | server exited with code 1 "
        "before it was ready; last lines: |" in failed
    )
    assert "| old | c1 | --x | boom |" in failed  # an older error.json: its folder names it
    assert "{'name'" not in failed and "'args'" not in failed
    assert failed.count("<details>") == 1  # the two cells share one log
    assert "int8-w8a8 (c1, c8): last lines of the server log" in failed
    assert "ValueError: int8_scaled_mm: expect A to be bfloat16 | half\n```" in failed


def test_extra_sections_come_from_the_caller(tmp_path):
    """The harness knows no other package's section: its caller passes them (week2_serving.report
    adds quantization quality), each shown only when it returns text."""
    sweep = tmp_path / "week2" / "sweep-x"
    c = cell("default", "c1", 1, 100, 20, 9, tmp_path / "model")
    write_json_atomic(sweep / "default" / "c1" / "results.json", c)
    write_json_atomic(tmp_path / "week2" / "quant-quality" / "results.json", {"variants": {}})
    seen = []

    def note(sweep_dir, cells, baseline):
        seen.append((sweep_dir, [x["load_name"] for x in cells], baseline))
        return "a note about c1"

    extras = {"Notes": note, "Nothing": lambda *a: None}
    text = report.build(sweep, bandwidth_gbs=10.0, extra_sections=extras).read_text()
    assert "## Notes\n\na note about c1" in text and "## Nothing" not in text
    assert seen == [(sweep, ["c1"], "default")]
    plain = report.build(sweep, bandwidth_gbs=10.0).read_text()
    assert "## Notes" not in plain and "Quantization" not in plain
