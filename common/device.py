"""Pick the device (and a sensible dtype) once, the same way in every week.

>>> from common.device import pick_device
>>> pick_device("auto")        # cuda > mps > cpu
device(type='cpu')
"""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def available_devices() -> list[str]:
    """Names of the devices this machine can use, best first, e.g. ['cuda', 'cuda:0', 'cpu']."""
    found: list[str] = []
    if torch.cuda.is_available():
        found.append("cuda")
        found += [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available():
        found.append("mps")
    found.append("cpu")
    return found


def pick_device(name: str | torch.device = "auto") -> torch.device:
    """Return a torch.device for `name`: 'auto' picks cuda > mps > cpu.

    An explicit device that this machine does not have raises a ValueError that lists the
    devices it does have, instead of failing later inside a kernel.
    """
    if isinstance(name, torch.device):
        name = str(name)
    name = name.strip().lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(
            f"unknown device {name!r}; use one of {', '.join(DEVICE_CHOICES)} "
            f"(available here: {', '.join(available_devices())})"
        ) from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {name!r} was asked for but CUDA is not available on this machine; "
                f"available: {', '.join(available_devices())}. Use --device auto or cpu."
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {name!r} does not exist: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); available: "
                f"{', '.join(available_devices())}"
            )
    elif dev.type == "mps" and not _mps_available():
        raise ValueError(
            f"device {name!r} was asked for but MPS is not available on this machine; "
            f"available: {', '.join(available_devices())}. Use --device auto or cpu."
        )
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unsupported device {name!r}; use one of {', '.join(DEVICE_CHOICES)}")
    return dev


def pick_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """Training/inference dtype: 'auto' means bf16 on GPUs that support it, else float32.

    CPUs run fp32 here on purpose: bf16 matmuls on CPU are often slower and less precise,
    and the lessons compare against fp32 references.
    """
    table = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if name != "auto":
        if name not in table:
            raise ValueError(f"unknown dtype {name!r}; use auto or one of {', '.join(table)}")
        return table[name]
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # x86 flags of bf16 arithmetic


def pick_inference_dtype(
    device: torch.device, name: str = "auto", cpu_flags: frozenset[str] | None = None
) -> torch.dtype:
    """Serving dtype (weights, activations, KV cache): 'auto' means bf16 on a GPU that supports
    it and on a CPU with native BF16 instructions (`cpu_flags` has avx512_bf16 or amx_bf16;
    None: this machine's, from common.cpu), float32 elsewhere. Training keeps `pick_dtype`.

    Serving differs from training here: a 16-bit model halves the bytes every decode step
    reads (weights and KV cache), and a CPU with BF16 dot products computes in it natively.
    """
    if name != "auto" or device.type == "cuda":
        return pick_dtype(device, name)
    if device.type == "cpu":
        if cpu_flags is None:
            from common.cpu import cpu_caps

            cpu_flags = cpu_caps().flags
        if NATIVE_BF16_CPU_FLAGS & set(cpu_flags):
            return torch.bfloat16
    return torch.float32


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels on `device` (a no-op on CPU); needed before reading a clock."""
    dev = torch.device(device) if isinstance(device, str) else device
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps" and _mps_available():
        torch.mps.synchronize()
