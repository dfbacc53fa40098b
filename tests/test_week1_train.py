"""Week 1: tokenizers, corpus preparation, training, resume, export."""

from __future__ import annotations

import json

import pytest
import torch

from common.checkpoint import CheckpointError, load_checkpoint
from week1_gpt_kvcache import corpus, export, hf_convert, prepare, train, training
from week1_gpt_kvcache.checkpoint import load_model_and_tokenizer
from week1_gpt_kvcache.model import BigramLM
from week1_gpt_kvcache.tokenizer import BPETokenizer, CharTokenizer, load_tokenizer

TEXT = "To be, or not to be: that is the question.\nÜber naïve café — 東京 🚀\n"


def test_char_tokenizer_round_trip_and_unknown_characters(tmp_path):
    tok = CharTokenizer.train(TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT
    with pytest.raises(ValueError, match=r"\['Z', 'x'\] are not in this character tokenizer"):
        tok.encode("xZ")
    tok.save(tmp_path / "t.json")
    assert load_tokenizer(tmp_path / "t.json").encode("To be") == tok.encode("To be")


def test_bpe_round_trip_any_text(tmp_path):
    tok = BPETokenizer.train([TEXT * 20, corpus.pydoc_corpus()[:50000]], vocab_size=400)
    assert tok.vocab_size == 400 and tok.eos_id is not None
    unseen = "Zebra ¿qué? \t\n  spaces   and bytes \x00\x7f ✓"
    for text in (TEXT, unseen):
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode("the question")) < len("the question")  # merges compress
    tok.save(tmp_path / "b.json")
    assert load_tokenizer(tmp_path / "b.json").encode(unseen) == tok.encode(unseen)
    with pytest.raises(ValueError, match="vocab_size=100 is too small"):
        BPETokenizer.train([TEXT], vocab_size=100)


def test_prepare_text_file_and_split(tmp_path, runs_dir):
    (tmp_path / "c.txt").write_text("hello world, " * 400)
    meta = prepare.main(prepare.PrepareConfig(tokenizer="char", text_file=str(tmp_path / "c.txt")))
    assert meta["source"].startswith("file:") and meta["vocab_size"] == len(set("hello world, "))
    total = meta["train_tokens"] + meta["val_tokens"]
    assert total == 5200 and abs(meta["val_tokens"] / total - 0.1) < 0.01
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        prepare.main(prepare.PrepareConfig(text_file=str(tmp_path / "nope.txt")))


def test_offline_corpus_is_english_documentation():
    text = corpus.pydoc_corpus()
    assert len(text) > 300_000 and "the" in text


def test_bigram_from_counts_is_the_optimum():
    tokens = torch.tensor([0, 1, 0, 1, 0, 2] * 50)
    model = BigramLM.from_counts(tokens, 3, smoothing=1e-6)
    _, loss = model(tokens[:-1].unsqueeze(0), tokens[1:].unsqueeze(0))
    # after 0 comes 1 (2/3) or 2 (1/3); after 1 and 2 always 0
    expected = (
        -(2 / 3 * torch.log(torch.tensor(2 / 3)) + 1 / 3 * torch.log(torch.tensor(1 / 3))) / 2
    )
    assert loss.item() == pytest.approx(expected.item(), abs=0.01)


def test_lr_schedule():
    schedule = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert training.lr_at(0, **schedule) == pytest.approx(1e-4)
    assert training.lr_at(9, **schedule) == pytest.approx(1e-3)
    assert training.lr_at(60, **schedule) == pytest.approx((1e-3 + 1e-4) / 2)
    assert training.lr_at(110, **schedule) == pytest.approx(1e-4)
    cfg = train.make_train_config("tiny", **schedule)
    assert [train.schedule(s, cfg) for s in (0, 60)] == [
        training.lr_at(s, **schedule) for s in (0, 60)
    ]


def test_tiny_training_learns_and_writes_outputs(tiny_gpt):
    res = tiny_gpt["results"]
    out = tiny_gpt["runs"] / "week1" / "tiny-llama"
    for f in (
        "checkpoint.pt",
        "tokenizer.json",
        "metrics.jsonl",
        "loss_curve.png",
        "samples.txt",
        "results.json",
    ):
        assert (out / f).exists(), f
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    assert vals[-1] < vals[0] < 6.3  # ln(512) = 6.24 is a uniform guess
    assert res["final_val_loss"] == vals[-1] and len(res["samples"]) == 3


def test_killed_run_resumes_with_same_optimizer_and_step(runs_dir, monkeypatch):
    prepare.main(prepare.PrepareConfig(tokenizer="bpe", vocab_size=300, source="pydoc"))
    full = train.main(train.make_train_config("tiny", run_name="full"))
    ref = load_checkpoint(runs_dir / "week1" / "full" / "checkpoint.pt")

    real, calls = train.estimate_loss, []

    def eval_then_die(*a, **k):  # die at the 2nd evaluation (step 20), before its checkpoint
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*a, **k)

    monkeypatch.setattr(train, "estimate_loss", eval_then_die)
    with pytest.raises(KeyboardInterrupt):
        train.main(train.make_train_config("tiny", run_name="killed"))
    assert load_checkpoint(runs_dir / "week1" / "killed" / "checkpoint.pt")["step"] == 10
    monkeypatch.setattr(train, "estimate_loss", real)

    resumed = train.main(train.make_train_config("tiny", run_name="killed", resume=True))
    got = load_checkpoint(runs_dir / "week1" / "killed" / "checkpoint.pt")
    assert got["step"] == ref["step"] == 30
    for k, v in ref["model"].items():
        assert torch.equal(got["model"][k], v), k
    for i, s in ref["optimizer"]["state"].items():
        assert torch.equal(got["optimizer"]["state"][i]["exp_avg"], s["exp_avg"])
        assert got["optimizer"]["state"][i]["step"] == s["step"]
    assert resumed["final_val_loss"] == full["final_val_loss"]


def test_resume_from_the_other_preset_is_a_clear_error(runs_dir):
    prepare.main(prepare.PrepareConfig(tokenizer="bpe", vocab_size=300, source="pydoc"))
    train.main(train.make_train_config("tiny", arch="gpt2", run_name="r", max_steps=10))
    with pytest.raises(
        CheckpointError, match="different model \\(gpt2 preset\\).*'arch': \\('gpt2', 'llama'\\)"
    ):
        train.main(
            train.make_train_config("tiny", arch="llama", run_name="r", max_steps=10, resume=True)
        )


def test_missing_data_is_a_clear_error(runs_dir):
    with pytest.raises(FileNotFoundError, match="run python -m week1_gpt_kvcache.prepare"):
        train.main(train.make_train_config("tiny"))


def test_export_reloads_with_auto_classes_and_reproduces_logits(tiny_gpt):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf_dir = tiny_gpt["hf_dir"]
    for f in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ):
        assert (hf_dir / f).exists(), f
    model, tok = load_model_and_tokenizer(tiny_gpt["checkpoint"])
    hf = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    hf_tok = AutoTokenizer.from_pretrained(hf_dir)
    assert type(hf).__name__ == "LlamaForCausalLM"
    text = "The object's attributes are looked up in its __dict__."
    ids = tok.encode(text)
    assert hf_tok(text)["input_ids"] == ids and hf_tok.decode(ids) == text
    chat = hf_tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "user: hi\nassistant:"  # chat APIs work on the exported model
    x = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(hf(x).logits, model(x)[0])
    back = hf_convert.from_hf_folder(hf_dir)
    torch.testing.assert_close(back(x)[0], model(x)[0])


def test_export_gpt2_and_char_refusal(runs_dir):
    prepare.main(prepare.PrepareConfig(tokenizer="bpe", vocab_size=300, source="pydoc"))
    train.main(train.make_train_config("tiny", arch="gpt2", max_steps=5, run_name="g"))
    out = export.export(runs_dir / "week1" / "g" / "checkpoint.pt", runs_dir / "hf-g")
    assert json.loads((out / "config.json").read_text())["architectures"] == ["GPT2LMHeadModel"]
    prepare.main(prepare.PrepareConfig(tokenizer="char", source="pydoc"))
    train.main(train.make_train_config("tiny", tokenizer="char", max_steps=5, run_name="c"))
    with pytest.raises(ValueError, match="'char' tokenizer; export needs the BPE one"):
        export.export(runs_dir / "week1" / "c" / "checkpoint.pt", runs_dir / "hf-c")
    assert not (runs_dir / "hf-c").exists()


def test_export_of_missing_checkpoint_names_it(runs_dir):
    with pytest.raises(CheckpointError, match="nowhere.pt does not exist"):
        export.export(runs_dir / "nowhere.pt", runs_dir / "hf")


def test_bench_on_the_tiny_model_and_report_section(tiny_gpt, monkeypatch):
    from common.report import build_report
    from week1_gpt_kvcache import bench

    monkeypatch.setenv("IE_RUNS_DIR", str(tiny_gpt["runs"]))
    res = bench.main(
        bench.BenchConfig(
            checkpoint=str(tiny_gpt["checkpoint"]),
            hf_dir=str(tiny_gpt["hf_dir"]),
            lengths=[8, 24],
            prompt_len=8,
            hf_new_tokens=8,
            hf_batches=[1, 3],
            repeats=1,
        )
    )
    assert [r["new_tokens"] for r in res["cache_vs_no_cache"]] == [8, 24]
    assert all(r["same_tokens"] for r in res["cache_vs_no_cache"])
    assert res["memory"]["formula_matches_tensors"]
    assert [r["token_agreement"] for r in res["vs_hf_generate"]] == [
        1.0,
        1.0,
    ]  # same greedy tokens as HF
    for plot in res["plots"]:
        assert (tiny_gpt["runs"] / "week1" / "bench" / plot).exists()
    text = build_report().read_text()
    assert "**KV cache** (batch 1" in text and "hf-tiny" not in text
