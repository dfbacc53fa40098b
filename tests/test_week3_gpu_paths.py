"""Week 3's GPU profile and hub paths, checked offline on CPU.

- a hub id (`testorg/tiny`) resolves from a fake hub cache through sft, dpo's loader and the
  local eval, with no network;
- the `gpu` presets are valid, and their dataset (SST-2's id, splits and columns) loads through
  `datasets` from local JSON files with the same columns, then trains on CPU with the tiny
  model in place of Qwen;
- the CUDA-only choices (trainer precision flags, 4-bit device map and compute dtype, vLLM's
  dtype flag) are reached through their device/dtype arguments.
The CUDA runs themselves are in tests/test_gpu.py (marker `gpu`).
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from tests.fake_hub import make_fake_hub
from week3_finetune_lora import data, dpo, serve, sft, training
from week3_finetune_lora.generation import load_local
from week3_finetune_lora.rows import PAIR_FIELDS, load_hub_rows, read_jsonl
from week3_finetune_lora.scoring import task_checks
from week3_finetune_lora.tasks import SST2, TASKS, HubDataset

WEEK3 = Path(__file__).resolve().parent.parent / "week3_finetune_lora"

SENTENCES = [
    ("a gripping, beautifully acted film", 1),
    ("dull and far too long", 0),
    ("the best thing i have seen this year", 1),
    ("a mess from start to finish", 0),
    ("warm , funny and sharp", 1),
    ("i wanted my two hours back", 0),
]


@pytest.fixture
def fake_hub(tiny_gpt, tmp_path, monkeypatch) -> Path:
    return make_fake_hub(tmp_path / "hf", tiny_gpt["hf_dir"], "testorg/tiny", monkeypatch)


@pytest.fixture
def local_sst2(tmp_path) -> HubDataset:
    """SST-2's spec pointed at local JSON files with SST-2's columns (idx, sentence, label)."""
    files = {}
    for split, rows in (("train", SENTENCES), ("validation", SENTENCES[:4])):
        path = tmp_path / f"sst2-{split}.jsonl"
        path.write_text(
            "".join(
                json.dumps({"idx": i, "sentence": s, "label": y}) + "\n"
                for i, (s, y) in enumerate(rows)
            )
        )
        files[split] = str(path)
    return replace(SST2, path="json", data_files=files)


def test_sft_loads_a_hub_id_from_the_cache(fake_hub, tiny_gpt):
    model, tok = training.load_base("testorg/tiny", offline=True)
    ref, _ = training.load_base(str(tiny_gpt["hf_dir"]))
    x = torch.tensor([tok("reverse:1234=").input_ids])
    with torch.no_grad():
        assert torch.equal(model(x).logits, ref(x).logits)
    m, _ = load_local("testorg/tiny", offline=True)  # the eval / serve loader too
    with torch.no_grad():
        assert torch.equal(m(x).logits, ref(x).logits)


def test_sft_run_on_a_hub_id_offline(fake_hub, runs_dir):
    """The whole sft entry point with the tiny preset and `--model testorg/tiny --offline`."""
    data.main(data.make_config("tiny"))
    cfg = sft.parse_args(
        ["--preset", "tiny", "--task", "sort", "--model", "testorg/tiny", "--offline"]
        + ["--max-steps", "4", "--eval-limit", "4"]
    )
    assert (cfg.model, cfg.offline, cfg.dtype) == ("testorg/tiny", True, "float32")
    r = sft.main(cfg)
    assert r["trainable_tensors_changed"] == r["trainable_tensors"] > 0
    assert r["device"] == "cpu" and r["dtype"] == "float32"
    fp = json.loads((Path(r["adapter_dir"]) / "base_model.json").read_text())
    assert fp["path"] == "testorg/tiny"


def test_hub_id_not_cached_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="'testorg/absent'.*offline"):
        training.load_base("testorg/absent", offline=True)


def test_gpu_presets_are_valid_and_name_the_model():
    s = sft.make_config("gpu", task="sst2")
    assert s.model == "Qwen/Qwen2.5-0.5B-Instruct" and s.dtype == "auto"
    assert s.max_length >= 128 and s.threads is None
    q = sft.make_config("gpu", task="sst2", quant="nf4")
    assert q.run_name == "qlora-sst2"
    d = dpo.make_config("gpu")
    assert (d.task, d.model) == ("sst2", s.model)
    assert d.sft_adapter.endswith("sft-sst2/adapter")
    v = serve.make_config("gpu")
    assert v.model == s.model and v.dtype == "bfloat16"
    assert "sst2" in data.make_config("gpu").tasks
    spec = TASKS["sst2"].hub
    assert (spec.path, spec.train_split, spec.test_split) == (
        "stanfordnlp/sst2",
        "train",
        "validation",
    )
    assert (spec.text_column, spec.label_column) == ("sentence", "label")
    # the CPU defaults did not move
    c = sft.make_config("cpu")
    assert (c.dtype, c.max_length, c.learning_rate, c.threads) == ("float32", 32, 2e-3, 1)
    assert serve.vllm_extra(serve.make_config("cpu")) == []


def test_bad_preset_values_are_named():
    with pytest.raises(ValueError, match="dtype='int3'"):
        sft.make_config("gpu", dtype="int3")
    with pytest.raises(ValueError, match="device='tpu'"):
        dpo.make_config("gpu", device="tpu")
    with pytest.raises(ValueError, match="dtype='auto'"):
        serve.make_config("gpu", dtype="auto")
    with pytest.raises(ValueError, match="unknown task 'sst3'"):
        sft.make_config("gpu", task="sst3")
    with pytest.raises(ValueError, match="clashes"):
        data.make_config("gpu", hub=(replace(SST2, task="sort"),))
    with pytest.raises(ValueError, match="lacks"):
        replace(SST2, template="no slot")


def test_cuda_choices_through_their_arguments():
    """What a GPU run would pick, decided from the device/dtype passed in (no CUDA needed)."""
    cuda, cpu = torch.device("cuda:1"), torch.device("cpu")
    assert training.trainer_precision(cuda, torch.bfloat16) == dict(
        use_cpu=False, bf16=True, fp16=False
    )
    assert training.trainer_precision(cuda, torch.float16) == dict(
        use_cpu=False, bf16=False, fp16=True
    )
    # on CPU, never mixed precision (transformers refuses bf16 there): today's fp32 path
    assert training.trainer_precision(cpu, torch.bfloat16) == dict(
        use_cpu=True, bf16=False, fp16=False
    )
    assert training.device_map(cuda) == {"": 1} and training.device_map(torch.device("cuda")) == {
        "": 0
    }
    assert training.device_map(cpu) == "cpu"
    q = training.nf4_config(torch.bfloat16)
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    extra = serve.vllm_extra(serve.make_config("gpu"))
    assert extra[:2] == ["--dtype", "bfloat16"] and "--gpu-memory-utilization" in extra


def test_gpu_dataset_from_local_files_trains_on_cpu(local_sst2, tiny_gpt, runs_dir):
    """The gpu preset's data path (datasets' json loader, same columns) -> rows -> a LoRA step
    with the gpu SFT preset, the tiny model standing in for Qwen."""
    res = data.main(data.make_config("gpu", tasks=(), hub=(local_sst2,), hub_n_train=5))
    rows = read_jsonl(res["files"]["sst2"]["train"], PAIR_FIELDS)
    assert len(rows) == 5
    by_text = dict(SENTENCES)
    for r in rows:
        want = SST2.labels[by_text[r["input"]]]
        assert r["completion"] == " " + want and r["rejected"].strip() != want
        assert r["prompt"] == f"Review: {r['input']}\nSentiment:"
    assert len(read_jsonl(res["files"]["sst2"]["test"])) == 4
    cfg = sft.make_config(
        "gpu",
        task="sst2",
        model=str(tiny_gpt["hf_dir"]),
        device="cpu",
        dtype="float32",
        max_steps=3,
        warmup_steps=0,  # step 1 at lr 0 would leave A unchanged (its gradient needs B != 0)
        batch_size=2,
        max_length=64,
        threads=1,
    )
    r = sft.main(cfg)
    assert r["trainable_tensors_changed"] == r["trainable_tensors"] > 0
    assert r["frozen_tensors_changed"] == []
    assert r["adapter"]["n"] == 4 and "valid_label" in r["adapter"]["checks"]


def test_missing_column_and_unlabelled_split_are_named(local_sst2):
    bad = replace(local_sst2, text_column="text")
    with pytest.raises(ValueError, match=r"not \['text'\]"):
        load_hub_rows(bad, "train", None, 0)
    with pytest.raises(ValueError, match="label -1"):
        SST2.row("no label here", -1)


def test_label_task_checks():
    assert task_checks("sst2", "x", " positive\n") == {"valid_label": True}
    assert task_checks("sst2", "x", "great") == {"valid_label": False}
    assert "is_digits" in task_checks("sort", "4213", "1234")  # digit tasks unchanged


def test_nothing_forces_offline():
    """Offline is the user's choice (--offline / HF_HUB_OFFLINE): week 3 never sets it."""
    setting = re.compile(r"environ(\[|\.setdefault\(|\.update\().*OFFLINE|OFFLINE\W*=\W*.1")
    for path in sorted(WEEK3.glob("*.py")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not setting.search(line), f"{path.name}:{n} forces offline: {line.strip()}"
