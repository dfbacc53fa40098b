"""Quality of the quantized variants: the metrics on hand-computed inputs, the quality run with
its failures recorded (no server started), and the report table built from results files."""

from __future__ import annotations

import math

import pytest

from common.results import write_json_atomic
from tests.test_week2_quant import fake_model
from tests.test_week2_report import cell
from week2_serving import report
from week2_serving.quant import quality, report_section
from week2_serving.quant.metrics import (
    greedy_agreement,
    perplexity,
    prompt_token_logprobs,
    prompt_top1,
)

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

    monkeypatch.setattr(quality, "launch", failing_launch)
    cfg = quality.QualityConfig(
        variants=["fp32", "int4-awq"], model=str(model), quantized=str(qdir), data=str(tmp_path)
    )
    rows = quality.main(cfg)["variants"]
    assert rows["fp32"]["status"] == "error" and "before it was ready" in rows["fp32"]["error"]
    assert rows["int4-awq"]["error"] == "not produced: AWQ exploded"
    assert (tmp_path / "runs" / "week2" / "quant-quality" / "results.json").is_file()


@pytest.mark.parametrize("at_once", [1, 2])
def test_quality_starts_servers_in_groups_and_uses_them_one_at_a_time(
    tmp_path, monkeypatch, at_once
):
    """Two at once: a pair's servers are spawned before either is used; each is evaluated
    alone and every one is stopped, also the one whose evaluation failed."""
    import numpy as np

    from tests.test_week2_sweep import SpawnableServer

    model = fake_model(tmp_path / "model")
    np.arange(2000, dtype=np.uint16).tofile(tmp_path / "val.bin")
    events = []
    monkeypatch.setattr(quality, "servers_at_once", lambda _gib, most=3: at_once)
    monkeypatch.setattr(
        quality,
        "launch",
        lambda engine, folder, served_name, **kw: SpawnableServer(served_name, events),
    )

    def evaluate(url, name, windows, prompts, max_tokens):
        events.append(("eval", name))
        if name == "bf16":
            raise RuntimeError("HTTP 500")
        return {"logprobs": [[-1.0, -2.0]], "top1": [[1]], "greedy": [[3]], "greedy_repeat": [[3]]}

    monkeypatch.setattr(quality, "evaluate_server", evaluate)
    cfg = quality.QualityConfig(variants=["fp32", "bf16"], model=str(model), data=str(tmp_path))
    rows = quality.main(cfg)["variants"]
    assert rows["fp32"]["status"] == "ok" and "HTTP 500" in rows["bf16"]["error"]
    if at_once == 2:
        assert events[:2] == [("spawn", "fp32"), ("spawn", "bf16")]
        assert events[2:] == [
            ("wait", "fp32"), ("eval", "fp32"), ("stop", "fp32"),
            ("wait", "bf16"), ("eval", "bf16"), ("stop", "bf16"),
        ]  # fmt: skip
    else:
        assert events == [
            ("start", "fp32"), ("eval", "fp32"), ("stop", "fp32"),
            ("start", "bf16"), ("eval", "bf16"), ("stop", "bf16"),
        ]  # fmt: skip


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
    measured = {
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
    write_json_atomic(week / "quant-quality" / "results.json", measured)
    text = report.build(sweep, bandwidth_gbs=10.0).read_text()
    assert "## Quantization: quality beside speed" in text
    # like with like: the bf16 variant is compared with the bf16 control, not with fp32
    row = "| int4-awq | bfloat16 | 1.0 | 42 | 11.00 (+5.00% vs bf16) | 0.500 | 0.250 | 0.900 |"
    assert row in text
    assert "| fp32 | float32 | 4.0 | — | 10.00 (reference)" in text and "| 100 |" in text
    assert "failed: not produced: boom |" in text
    assert "| int4-awq | c1 | +50% |" in text  # the variant is a lever in the lever table


def test_no_quality_section_without_results(tmp_path):
    assert report_section(tmp_path, [], None) is None


def test_report_section_is_the_packages_table_with_a_legend(tmp_path):
    week = tmp_path / "week2"
    rows = {
        "fp32": {"status": "ok", "dtype": "float32", "perplexity": 10.0, "weight_bytes": 4e6},
        "int8-w8a8": {
            "status": "ok",
            "dtype": "float32",
            "compared_with": "fp32",
            "perplexity": 9.0,
            "weight_bytes": 2e6,
        },
    }
    write_json_atomic(
        week / "quant-quality" / "results.json",
        {"reference": "fp32", "variants": rows, "config": {"eval_len": 8}, "eval": {"windows": 3}},
    )
    cells = [
        cell("default", "c1", 1, 100, 20, 9, tmp_path),
        cell("int8-w8a8", "c1", 1, 80, 20, 9, tmp_path),
    ]
    text = report_section(week, cells, "default")
    assert "| int8-w8a8 | float32 | 2.0 | — | 9.00 (-10.00% vs fp32) | n/a |" in text
    assert text.count("| 100 |") == 1 and "| 80 |" in text  # the baseline server is the fp32 row
    assert "- `int8-w8a8`: int8 weights and activations" in text  # the registry's label
    assert "3 windows of 8 tokens" in text
