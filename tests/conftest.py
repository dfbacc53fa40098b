"""Shared test setup: results go to a temp folder, hubs are offline, threads are few."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def runs_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes its runs/ into its own temp folder, never into the repository."""
    path = tmp_path / "runs"
    monkeypatch.setenv("IE_RUNS_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def session_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs/ folder shared by the tests of a session that reuse one expensive artifact."""
    return tmp_path_factory.mktemp("session-runs")


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, dirs_exist_ok=True)
