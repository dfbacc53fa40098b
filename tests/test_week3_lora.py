"""Week 3: LoRA/QLoRA training, merging, adapter checks, DPO — on the tiny week 1 export.

Tiny configs (20 SFT steps, 6 DPO steps, a 16-row eval) keep the file to about a minute on
2 cores; the real accuracy numbers come from `make week3`, not from tests.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from week3_finetune_lora import data, dpo, sft
from week3_finetune_lora.adapters import (
    AdapterError,
    adapter_rank,
    check_adapter_base,
    merged_copy,
)
from week3_finetune_lora.generation import load_local
from week3_finetune_lora.multilora import pick_max_rank
from week3_finetune_lora.rows import read_jsonl, write_jsonl


@pytest.fixture(scope="module")
def tiny_sft(tiny_gpt: dict, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Task data and one tiny LoRA adapter (sort task) trained on the tiny export."""
    runs = tmp_path_factory.mktemp("w3runs")
    old = os.environ.get("IE_RUNS_DIR")
    os.environ["IE_RUNS_DIR"] = str(runs)
    try:
        data.main(data.DataConfig(n_train=200, n_test=16))
        res = sft.main(
            sft.make_config("tiny", task="sort", model=str(tiny_gpt["hf_dir"]), learning_rate=1e-2)
        )
    finally:
        os.environ.pop("IE_RUNS_DIR") if old is None else os.environ.update(IE_RUNS_DIR=old)
    return {"runs": runs, "res": res, "hf_dir": str(tiny_gpt["hf_dir"])}


def test_lora_changes_adapter_not_base(tiny_sft):
    r = tiny_sft["res"]
    # Every LoRA matrix moved (B starts at 0, A at random: both must have trained)...
    assert r["trainable_tensors"] > 0
    assert r["trainable_tensors_changed"] == r["trainable_tensors"]
    # ...and not one frozen base tensor did.
    assert r["frozen_tensors_changed"] == []
    assert 0 < r["trainable_fraction"] <= 0.05 or r["total_params"] < 1e6  # tiny: larger share
    saved = load_file(Path(r["adapter_dir"]) / "adapter_model.safetensors")
    assert saved and all("lora_" in k for k in saved)  # only adapter tensors are saved
    b = [v for k, v in saved.items() if "lora_B" in k]
    assert all(v.abs().max() > 0 for v in b)  # B left zero would make the adapter a no-op
    assert r["loss_history"] and r["final_loss"] is not None


def test_merged_logits_equal_base_plus_adapter(tiny_sft):
    model, tok = load_local(tiny_sft["hf_dir"], tiny_sft["res"]["adapter_dir"])
    merged = merged_copy(model).eval()
    ids = tok(["sort:4819=", "sort:0007=1"], return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad():
        adapted = model(ids).logits  # (B, T, V): W x + (alpha/r) B A x, computed unmerged
        folded = merged(ids).logits  # (B, T, V): (W + (alpha/r) B A) x
        with model.disable_adapter():
            base = model(ids).logits
    torch.testing.assert_close(folded, adapted, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(base, adapted, atol=1e-3)  # the adapter does change the output


def test_adapter_for_another_base_is_rejected(tiny_sft):
    from transformers import AutoConfig, AutoModelForCausalLM

    adapter = tiny_sft["res"]["adapter_dir"]
    cfg = AutoConfig.from_pretrained(tiny_sft["hf_dir"])
    same_arch_other_weights = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(AdapterError, match="different weights"):
        check_adapter_base(adapter, same_arch_other_weights)
    cfg.hidden_size *= 2
    cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    with pytest.raises(AdapterError, match="another base.*hidden_size"):
        check_adapter_base(adapter, AutoModelForCausalLM.from_config(cfg))


def test_adapter_without_fingerprint_is_shape_checked(tiny_sft, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    foreign = tmp_path / "foreign"
    shutil.copytree(tiny_sft["res"]["adapter_dir"], foreign)
    (foreign / "base_model.json").unlink()  # an adapter from elsewhere: only shapes to go on
    cfg = AutoConfig.from_pretrained(tiny_sft["hf_dir"])
    cfg.intermediate_size += 8
    with pytest.raises(AdapterError, match="mlp.*trained for another base"):
        check_adapter_base(foreign, AutoModelForCausalLM.from_config(cfg))


def test_rank_above_server_max_is_rejected(tiny_sft, tmp_path):
    big = tmp_path / "big"
    shutil.copytree(tiny_sft["res"]["adapter_dir"], big)
    cfg = json.loads((big / "adapter_config.json").read_text())
    cfg["r"] = 16
    (big / "adapter_config.json").write_text(json.dumps(cfg))
    small = tiny_sft["res"]["adapter_dir"]
    assert adapter_rank(small) == 8
    assert pick_max_rank({"a": small}, None) == 8
    assert pick_max_rank({"a": small, "b": str(big)}, None) == 16  # auto: smallest that fits
    with pytest.raises(AdapterError, match=r"\{'b': 16\}.*--max-lora-rank 8"):
        pick_max_rank({"a": small, "b": str(big)}, 8)


def test_dataset_row_missing_field(tiny_gpt, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "sort:21=", "completion": "12"}\n{"prompt": "sort:31="}\n')
    cfg = sft.make_config("tiny", dataset=str(bad), model=str(tiny_gpt["hf_dir"]))
    with pytest.raises(ValueError, match=r"bad.jsonl:2.*missing field\(s\) \['completion'\]"):
        sft.main(cfg)


def test_bad_sft_config():
    with pytest.raises(ValueError, match="cannot be served"):
        sft.SFTRunConfig(target_modules=("lm_head",))
    with pytest.raises(ValueError, match="quant='int3'"):
        sft.SFTRunConfig(quant="int3")


def test_dpo_step_lowers_loss(tiny_sft, monkeypatch):
    """DPO from the tiny SFT adapter on a few pairs: the loss on those pairs goes down."""
    runs = tiny_sft["runs"]
    pairs_dir = runs / "week3" / "pairs" / "sort"
    pairs_dir.mkdir(parents=True)
    train = read_jsonl(runs / "week3" / "data" / "sort" / "train.jsonl")[:16]
    # Score on the training pairs themselves: the claim is that a step lowers *its* loss.
    for split in ("train", "test"):
        write_jsonl(pairs_dir / f"{split}.jsonl", train)
    monkeypatch.setenv("IE_RUNS_DIR", str(runs))
    res = dpo.main(
        dpo.make_config(
            "tiny",
            task="sort",
            model=tiny_sft["hf_dir"],
            sft_adapter=tiny_sft["res"]["adapter_dir"],
            data_dir=str(runs / "week3" / "pairs"),
            learning_rate=2e-3,
            eval_limit=16,
        )
    )
    assert res["held_out"]["eval_loss"] < res["held_out_before"]["eval_loss"]
    # Before any step the policy equals the reference, so every reward is exactly 0.
    assert abs(res["held_out_before"]["eval_rewards/margins"]) < 1e-4
    assert res["held_out"]["eval_rewards/margins"] > 0
    assert (Path(res["adapter_dir"]) / "adapter_model.safetensors").is_file()
    assert (runs / "week3" / "dpo-sort" / "before_after.png").is_file()


@pytest.mark.slow
def test_qlora_trains_on_cpu(tiny_gpt, tiny_sft, monkeypatch):
    """QLoRA: base in 4-bit NF4, adapter trains, base bytes shrink, no AVX512-BF16 crash."""
    monkeypatch.setenv("IE_RUNS_DIR", str(tiny_sft["runs"]))
    r = sft.main(
        sft.make_config(
            "tiny", task="sort", quant="nf4", model=tiny_sft["hf_dir"], max_steps=4, eval_base=False
        )
    )
    assert r["trainable_tensors_changed"] == r["trainable_tensors"] > 0
    assert r["frozen_tensors_changed"] == []
    assert r["base_weight_bytes"] < tiny_sft["res"]["base_weight_bytes"]


def test_summary_and_portfolio_from_results(tiny_sft):
    """The week's summary and portfolio section are built from the results files alone."""
    from week3_finetune_lora import portfolio, summary

    s = summary.main(summary.SummaryConfig(tiny_sft["runs"]))
    sort = next(t for t in s["tasks"] if t["task"] == "sort")
    assert sort["adapter_exact"] == tiny_sft["res"]["adapter"]["exact_match"]
    a = s["acceptance"]["sft-sort"]
    assert a["pass"] == (
        a["adapter_exact"] >= 0.9
        and a["base_exact"] < 0.1
        and a["train_seconds"] <= 600
        and a["trainable_fraction"] <= 0.05
    )
    assert (tiny_sft["runs"] / "week3" / "summary" / "before_after.png").is_file()
    text = portfolio.section(tiny_sft["runs"])
    assert "| sort |" in text and "before_after.png" in text
