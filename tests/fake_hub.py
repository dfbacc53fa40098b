"""A fake Hugging Face hub cache: a local model reachable by a hub id, with no network.

The layout is the one huggingface_hub writes (`hub/models--org--name/snapshots/<commit>/`
plus `refs/main` naming the commit), so `common.hub.resolve_model("org/name", offline=True)`
finds it exactly as it would find a model downloaded earlier.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

FAKE_COMMIT = "0123456789abcdef0123456789abcdef01234567"  # 40 hex digits, like a git sha


def make_fake_hub(
    hf_home: Path, model_dir: Path, repo_id: str, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Copy `model_dir` into a hub cache under `hf_home` as `repo_id`; point HF_HOME and
    HF_HUB_CACHE at it for this test. Returns the snapshot folder."""
    org, name = repo_id.split("/")
    repo = hf_home / "hub" / f"models--{org}--{name}"
    snapshot = repo / "snapshots" / FAKE_COMMIT
    shutil.copytree(model_dir, snapshot)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(FAKE_COMMIT)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_home / "hub"))
    return snapshot
