"""Numbers from one source: every README's generated blocks equal what reference/ renders,
and the check can fail (an edited copy is caught, then `make docs` fixes it)."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import pytest

from common.docs import DocsConfig, import_runs, load_tables, main, render_text, stale
from common.results import save_results
from tests.conftest import REPO


def test_readme_generated_blocks_are_fresh() -> None:
    tables = load_tables()
    assert {"week0-quantize", "week1-training", "week1-kv-cache"} <= set(tables)
    assert stale(REPO, tables, REPO / "reference") == [], "run `make docs` and commit"
    used = "".join(p.read_text() for p in REPO.glob("*/README.md"))
    for name in tables:  # every registered table is shown somewhere
        assert f"<!-- generated:{name} -->" in used, name


def copy_repo_docs(dst: Path) -> None:
    shutil.copytree(REPO / "reference", dst / "reference")
    for readme in REPO.glob("*/README.md"):
        (dst / readme.parent.name).mkdir()
        shutil.copy(readme, dst / readme.parent.name / "README.md")


def test_an_edited_block_is_caught_and_rewritten(tmp_path: Path, capsys) -> None:
    copy_repo_docs(tmp_path)
    readme = tmp_path / "week0_pytorch" / "README.md"
    fresh = readme.read_text()
    start = fresh.index("<!-- generated:week0-quantize -->")
    edited = fresh[:start] + fresh[start:].replace("98.00%", "99.99%", 1)
    readme.write_text(edited)
    tables = load_tables()
    assert stale(tmp_path, tables, tmp_path / "reference") == ["week0_pytorch/README.md"]
    assert main(DocsConfig(check=True, root=tmp_path)) == 1
    assert "out of date" in capsys.readouterr().err
    assert main(DocsConfig(root=tmp_path)) == 0  # make docs
    assert readme.read_text() == fresh
    assert main(DocsConfig(check=True, root=tmp_path)) == 0


def test_import_runs_copies_numbers_and_provenance(tmp_path: Path, monkeypatch) -> None:
    runs = tmp_path / "runs"
    monkeypatch.setenv("IE_RUNS_DIR", str(runs))
    numbers = {"final_val_loss": 3.5, "bigram_val_loss": 5.25, "steps": 7, "params": 1234567}
    path = save_results("week1", "gpt-llama-bpe", {**numbers, "train_seconds": 12.0})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # results are readable by everyone
    tables = load_tables()
    written = import_runs(runs, tmp_path / "reference", tables)
    assert [p.name for p in written] == ["week1-training.json"]
    text = "<!-- generated:week1-training -->\nold\n<!-- /generated:week1-training -->"
    out = render_text(text, tables, tmp_path / "reference")
    assert "**3.500**" in out and "5.250" in out and "1.23M parameters" in out
    assert "commit " in out and "unknown" not in out.split("commit ")[1][:8]
    with pytest.raises(ValueError, match="no-such-table"):
        render_text(text.replace("week1-training", "no-such-table"), tables, tmp_path)
    with pytest.raises(FileNotFoundError, match="--import-runs"):
        render_text(
            text.replace("week1-training", "week0-quantize"), tables, tmp_path / "reference"
        )
