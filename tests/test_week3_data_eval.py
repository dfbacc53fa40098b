"""Week 3: task data (seeded, disjoint, correct answers), dataset validation, and the scorer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from week3_finetune_lora import data
from week3_finetune_lora.rows import read_jsonl
from week3_finetune_lora.scoring import normalize, score, task_checks
from week3_finetune_lora.tasks import TASKS, Task


def test_answers_and_wrong_answers():
    assert TASKS["reverse"].answer("4819") == "9184"
    assert TASKS["sort"].answer("4819") == "1489"
    assert TASKS["shift"].answer("4919") == "5020"
    assert TASKS["add"].answer("27+58") == "85"
    rng = random.Random(0)
    for name, task in ((n, t) for n, t in TASKS.items() if t.generated):
        for _ in range(50):
            x = task.sample(rng, 4, 4)
            wrong = task.wrong(x, rng)
            # The rejected answer is a different, plausible (same length, digits) string...
            assert wrong != task.answer(x), (name, x)
            assert wrong.isdigit()
            if name != "add":
                assert len(wrong) == len(task.answer(x))


def test_data_files_disjoint_and_seeded(runs_dir):
    cfg = data.DataConfig(n_train=300, n_test=50, out_name="d1")
    res = data.main(cfg)
    for task, files in res["files"].items():
        train = read_jsonl(files["train"])
        test = read_jsonl(files["test"])
        assert len(train) == 300 and len(test) == 50
        assert not {r["input"] for r in train} & {r["input"] for r in test}  # disjoint
        for r in train[:20] + test[:20]:
            assert r["prompt"] == f"{task}:{r['input']}="
            assert r["completion"] == TASKS[task].answer(r["input"])
        chat = [json.loads(line) for line in Path(files["train_chat"]).read_text().splitlines()]
        assert chat[0]["prompt"][0]["role"] == "user"
        assert chat[0]["completion"][0]["content"] == train[0]["completion"]
    again = data.main(data.DataConfig(n_train=300, n_test=50, out_name="d2"))
    for task in res["files"]:  # same seed -> the same rows
        a = Path(res["files"][task]["test"]).read_text()
        assert a == Path(again["files"][task]["test"]).read_text()


def test_prompt_tokens_are_a_prefix(tiny_gpt):
    """The prompt's tokens are a prefix of prompt+completion's (no merge across '=')."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt["hf_dir"])
    rng = random.Random(1)
    for task in (t for t in TASKS.values() if t.generated):
        x = task.sample(rng, 4, 4)
        p = tok(task.prompt(x))["input_ids"]
        pc = tok(task.prompt(x) + task.answer(x))["input_ids"]
        assert pc[: len(p)] == p


def test_row_missing_field_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "reverse:12="}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2.*missing field\(s\) \['completion'\]"):
        read_jsonl(path)
    with pytest.raises(ValueError, match="not valid JSON"):
        path.write_text("{oops\n")
        read_jsonl(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_jsonl(tmp_path / "nope.jsonl")


def test_bad_config_values():
    with pytest.raises(ValueError, match="unknown task"):
        data.DataConfig(tasks=("rot13",))
    with pytest.raises(ValueError, match="min_len"):
        data.DataConfig(min_len=5, max_len=4)


def test_scorer_exact_match_and_checks():
    rows = [
        {"prompt": "sort:4819=", "completion": "1489", "task": "sort", "input": "4819"},
        {"prompt": "sort:4819=", "completion": "1489", "task": "sort", "input": "4819"},
        {"prompt": "sort:4819=", "completion": "1489", "task": "sort", "input": "4819"},
        {"prompt": "sort:4819=", "completion": "1489", "task": "sort", "input": "4819"},
    ]
    outs = [" 1489\n", "9841", "1489 and more\nnext line", "12"]
    s = score(rows, outs)
    assert s["per_row"] == [True, False, False, False]
    assert s["exact_match"] == 0.25
    assert s["checks"]["descending"] == 0.25  # the classic mistake is counted
    assert s["checks"]["same_digits"] == 0.5
    assert normalize("  42 \nx") == "42"
    assert task_checks("reverse", "4819", "9148") == {"is_digits": True, "same_digits": True}
    with pytest.raises(ValueError, match="4 rows but 3 outputs"):
        score(rows, outs[:3])


def double_task() -> Task:
    """A task defined outside the package, to add to the table in a test."""
    return Task(
        "double",
        lambda x, y: {"even_length": len(y) % 2 == 0},
        form_check="even_length",
        sft_steps=321,
        default=False,
        answer=lambda x: x + x,
        wrong=lambda x, rng: x,
        sample=lambda rng, lo, hi: "".join(rng.choice("0123456789") for _ in range(lo)),
    )


def test_one_table_entry_adds_a_task(monkeypatch, runs_dir):
    """data, the scorer and sft's default steps all read the one table."""
    from week3_finetune_lora import sft

    monkeypatch.setitem(TASKS, "double", double_task())
    res = data.main(data.DataConfig(tasks=("double",), n_train=20, n_test=5))
    row = read_jsonl(res["files"]["double"]["test"])[0]
    assert row["prompt"] == f"double:{row['input']}=" and row["completion"] == row["input"] * 2
    assert task_checks("double", row["input"], "1212\n") == {"even_length": True}
    assert sft.SFTRunConfig(task="double").max_steps == 321
    with pytest.raises(ValueError, match=r"unknown task 'triple'; choose from \[.*'double'"):
        data.DataConfig(tasks=("triple",))


SCRIPTS = {"data", "sft", "dpo", "evaluate", "serve", "summary"}


def test_scripts_import_only_libraries():
    """No week 3 module imports a script; week 2 is reached only through its harness API."""
    import ast

    from tests.conftest import REPO

    for path in sorted((REPO / "week3_finetune_lora").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {a.name for a in node.names}
                assert not (node.module == "week3_finetune_lora" and names & SCRIPTS), path.name
                assert node.module.split(".")[-1] not in SCRIPTS or not node.module.startswith(
                    "week3_finetune_lora"
                ), f"{path.name} imports the script {node.module}"
                if node.module.startswith("week2_serving"):
                    assert node.module == "week2_serving.harness", f"{path.name}: {node.module}"
