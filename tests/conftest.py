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


@pytest.fixture(scope="session")
def tiny_gpt(session_runs: Path) -> dict:
    """A tiny llama-preset GPT trained for 30 steps on the offline corpus, and its HF export.

    Session-scoped: several test files use it (export, reference checks, vLLM).
    """
    from week1_gpt_kvcache import export, prepare, train

    old = os.environ.get("IE_RUNS_DIR")
    os.environ["IE_RUNS_DIR"] = str(session_runs)
    try:
        prepare.main(prepare.PrepareConfig(tokenizer="bpe", vocab_size=512, source="pydoc"))
        res = train.main(train.make_train_config("tiny", run_name="tiny-llama"))
        ckpt = session_runs / "week1" / "tiny-llama" / "checkpoint.pt"
        hf_dir = export.export(ckpt, session_runs / "week1" / "hf-tiny")
    finally:
        if old is None:
            os.environ.pop("IE_RUNS_DIR", None)
        else:
            os.environ["IE_RUNS_DIR"] = old
    return {"runs": session_runs, "checkpoint": ckpt, "hf_dir": hf_dir, "results": res}


@pytest.fixture(scope="session")
def vllm_tiny(tiny_gpt: dict, tmp_path_factory: pytest.TempPathFactory):
    """Real vLLM (CPU build) serving the tiny export as model "tiny", once per session."""
    from common.server import free_port, vllm_available, vllm_server

    if not vllm_available():
        pytest.skip("vLLM venv .venvs/vllm is absent (make setup-vllm)")
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with vllm_server(
        tiny_gpt["hf_dir"], free_port(), log, max_model_len=128, served_name="tiny"
    ) as srv:
        yield srv
