"""Every entry point answers --help (argparse parses, imports work, nothing runs)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

ENTRY_POINTS = [
    "week0_pytorch.data",
    "week0_pytorch.train",
    "week0_pytorch.quantize",
    "week0_pytorch.micrograd.train",
    "common.report",
    "week1_gpt_kvcache.prepare",
    "week1_gpt_kvcache.train",
    "week1_gpt_kvcache.generate",
    "week1_gpt_kvcache.export",
    "week1_gpt_kvcache.bench",
    "week2_serving.harness.launch",
    "week2_serving.harness.bench",
    "week2_serving.harness.validate",
    "week2_serving.harness.sweep",
    "week2_serving.harness.report",
    "week2_serving.engine.server",
    "week2_serving.engine.bench",
    "week3_finetune_lora.data",
    "week3_finetune_lora.sft",
    "week3_finetune_lora.dpo",
    "week3_finetune_lora.evaluate",
    "week3_finetune_lora.serve",
    "week3_finetune_lora.summary",
]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help(module):
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


def test_train_rejects_bad_flag_value():
    out = subprocess.run(
        [sys.executable, "-m", "week0_pytorch.train", "--model", "resnet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "invalid choice: 'resnet'" in out.stderr
