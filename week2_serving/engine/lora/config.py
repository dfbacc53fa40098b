"""Multi-LoRA settings, checked before any weights load (pure Python, no torch).

    LoRAConfig(modules={"sql": "runs/week3/sql-adapter"}, max_loras=4, max_lora_rank=16)

`max_loras` adapters live in the engine's weight slots at once (slot 0, the base model, is
extra); the scheduler runs requests of at most that many distinct adapters together.
`max_cpu_loras` adapters keep a copy in host memory; the others are read again from their
folder when a request needs them (vLLM's `--max-loras` / `--max-lora-rank` / `--max-cpu-loras`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")  # what an adapter may be called


def check_name(name: object) -> str:
    """An adapter name as used in the API's `model` field, or a ValueError saying what to use."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"LoRA name {name!r}: use 1-128 characters of letters, digits and ._:/- "
            "(starting with a letter or digit)"
        )
    return name


def check_int(name: str, value: object, lo: int, hi: int) -> int:
    """An integer in lo..hi (a bool, float or string is refused, naming the setting)."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name}={value!r}: use an integer in {lo}..{hi}")
    return value


@dataclass
class LoRAConfig:
    modules: dict[str, str] = field(default_factory=dict)  # name -> peft folder, loaded at start
    max_loras: int = 1  # adapters in the weight slots at once (requests of more distinct wait)
    max_lora_rank: int = 16  # largest rank an adapter may have (the slots are this wide)
    max_cpu_loras: int | None = None  # adapters kept in host memory; None: max_loras

    def __post_init__(self) -> None:
        check_int("max_loras", self.max_loras, 1, 256)
        check_int("max_lora_rank", self.max_lora_rank, 1, 512)
        if self.max_cpu_loras is None:
            self.max_cpu_loras = self.max_loras
        check_int("max_cpu_loras", self.max_cpu_loras, 1, 4096)
        if self.max_cpu_loras < self.max_loras:
            raise ValueError(
                f"max_cpu_loras={self.max_cpu_loras} < max_loras={self.max_loras}: every "
                "adapter in a slot keeps its host copy; raise max_cpu_loras"
            )
        for name in self.modules:
            check_name(name)


def parse_modules(specs: list[str]) -> dict[str, str]:
    """`--lora-modules name=path ...` as {name: path}; a malformed or repeated name is refused."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not path:
            raise ValueError(f"--lora-modules {spec!r}: write NAME=PATH (a peft adapter folder)")
        if check_name(name) in out:
            raise ValueError(f"--lora-modules: the name {name!r} is given twice")
        out[name] = path
    return out
