"""common.cli: a dataclass becomes a command line (flags, help from comments, presets)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from common.cli import build_parser, field_comments, parse


@dataclass
class Demo:
    """A demo config."""

    num_prompts: int = 64  # requests in the run
    rate: float = math.inf  # requests per second
    name: str | None = None  # run name
    # the backend to drive
    backend: Literal["openai", "vllm"] = "openai"
    ignore_eos: bool = True  # generate exactly max_tokens
    sizes: list[int] = field(default_factory=lambda: [1, 8])  # concurrency levels
    out: Path = Path("runs")  # output folder
    pair: tuple[int, int] = (1, 2)  # two numbers
    hidden: int = field(default=3, metadata={"cli": False})

    def __post_init__(self):
        if self.num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {self.num_prompts}")


def test_defaults_come_from_the_dataclass():
    assert parse(Demo, []) == Demo()


def test_flags_are_kebab_case_and_typed():
    cfg = parse(
        Demo,
        [
            "--num-prompts",
            "5",
            "--rate",
            "2.5",
            "--name",
            "x",
            "--backend",
            "vllm",
            "--no-ignore-eos",
            "--sizes",
            "1",
            "2",
            "3",
            "--out",
            "/tmp/o",
            "--pair",
            "3",
            "4",
        ],
    )
    assert cfg == Demo(5, 2.5, "x", "vllm", False, [1, 2, 3], Path("/tmp/o"), (3, 4))


def test_help_shows_comments_and_defaults():
    text = build_parser(Demo).format_help()
    assert "requests in the run (default: 64)" in text
    assert "the backend to drive" in text and "--no-ignore-eos" in text
    assert "--hidden" not in text and "A demo config." in text


def test_comments_are_read_per_field():
    c = field_comments(Demo)
    assert c["rate"] == "requests per second" and c["backend"] == "the backend to drive"
    assert "hidden" not in c


def test_presets_sit_between_defaults_and_flags():
    presets = {"smoke": {"num_prompts": 8, "name": "smoke"}}
    assert parse(Demo, ["--preset", "smoke"], presets=presets).num_prompts == 8
    cfg = parse(Demo, ["--preset", "smoke", "--num-prompts", "2"], presets=presets)
    assert (cfg.num_prompts, cfg.name) == (2, "smoke")
    assert parse(Demo, [], presets=presets, default_preset="smoke").num_prompts == 8


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--num-prompts", "x"], "'x' is not a valid int"),
        (["--num-prompts", "0"], "num_prompts must be >= 1, got 0"),
        (["--backend", "tgi"], "invalid choice: 'tgi'"),
        (["--rate", "nan"], "finite number"),
        (["--preset", "nope"], "invalid choice"),
    ],
)
def test_bad_values_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(Demo, argv, presets={"smoke": {}})
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_none_word_for_optional_fields():
    assert parse(Demo, ["--name", "none"]).name is None
    with pytest.raises(SystemExit):
        parse(Demo, ["--num-prompts", "none"])
