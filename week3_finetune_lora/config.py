"""What every week 3 config shares: default paths, the GPU profile's model, presets, name checks.

Each entry point owns a config dataclass and a `PRESETS` table (`tiny` for tests, `cpu` for the
default run, `gpu` for real hardware); `from_preset` builds one the way the command line does
(dataclass default < preset < explicit value).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from common.results import runs_root

T = TypeVar("T")

GPU_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"  # the GPU profile's base (Qwen2: vLLM serves its LoRA)
DEVICE_KINDS = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "bfloat16", "float16")


def default_model() -> str:
    """Week 1's exported model, the CPU profile's base."""
    return str(runs_root() / "week1" / "hf-model")


def default_data_dir() -> str:
    """Where `week3_finetune_lora.data` writes the task files."""
    return str(runs_root() / "week3" / "data")


def from_preset(
    cls: type[T], presets: Mapping[str, Mapping[str, Any]], preset: str, **overrides: Any
) -> T:
    """`cls` built from a named preset, with `overrides` on top."""
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(presets)}")
    return cls(**{**presets[preset], **overrides})


def check_device_dtype(device: str, dtype: str) -> None:
    """Name checks only (a config on a CPU machine may be meant for a GPU): the device is
    looked up when the run starts."""
    if device.split(":")[0] not in DEVICE_KINDS:
        raise ValueError(f"device={device!r}: use auto, cpu, cuda, cuda:N or mps")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: use auto, float32, bfloat16 or float16")
