"""What this CPU can do, and the dtype vLLM's CPU build needs for each kind of model on it.

Machines of one "kind" differ: the same 2-core VM has been an AMD EPYC (AVX-512 + AVX-512 BF16,
no AMX) and an Intel Xeon Sapphire Rapids (AVX-512 BF16 + AMX tiles). vLLM's CPU build picks
different kernels on them, and some kernels accept only some activation dtypes:

- INT8 W8A8 (compressed-tensors): with AMX tiles vLLM runs its AMX int8 GEMM, whose
  activations must be bfloat16 or float16; without AMX it runs oneDNN's int8 GEMM, which also
  takes float32.
- INT4 AWQ: vLLM's CPU kernel computes with 16-bit activations on every x86 CPU.
- Unquantized weights: float32 is the reference everywhere (bfloat16 is a lever, not a need).

Decisions take a `CpuCaps` argument, so a test can ask "what on an AMX machine?" anywhere:

>>> caps = parse_cpuinfo("model name : Intel Xeon\\nflags : avx2 avx512f amx_tile amx_bf16")
>>> vllm_cpu_dtype("int8-w8a8", caps)
'bfloat16'
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

# the flags that change what runs fast (or at all) in this curriculum
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_int8")


@dataclass(frozen=True)
class CpuCaps:
    """A CPU's model name and the instruction-set flags that matter here."""

    model: str
    flags: frozenset[str]

    @property
    def avx512(self) -> bool:
        return "avx512f" in self.flags

    @property
    def avx512_bf16(self) -> bool:
        return "avx512_bf16" in self.flags

    @property
    def amx(self) -> bool:
        """AMX tiles (Intel Sapphire Rapids and later): vLLM's check is the tile flag."""
        return "amx_tile" in self.flags

    @property
    def isa(self) -> str:
        """The best level, as one word: amx > avx512_bf16 > avx512 > avx2 > baseline."""
        for name, have in (
            ("amx", self.amx),
            ("avx512_bf16", self.avx512_bf16),
            ("avx512", self.avx512),
            ("avx2", "avx2" in self.flags),
        ):
            if have:
                return name
        return "baseline"

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "isa": self.isa,
            "flags": {f: f in self.flags for f in ISA_FLAGS},
        }


def parse_cpuinfo(text: str) -> CpuCaps:
    """CpuCaps from the text of /proc/cpuinfo (the first processor's entry is enough)."""
    model, flags = "unknown", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key == "flags" and not flags:  # x86's (an Arm cpuinfo says "Features")
            flags = frozenset(value.split())
    return CpuCaps(model=model, flags=flags)


@functools.cache
def cpu_caps() -> CpuCaps:
    """This machine's CpuCaps (read once). Not Linux: an unknown CPU with no flags."""
    try:
        return parse_cpuinfo(Path("/proc/cpuinfo").read_text())
    except OSError:
        import platform

        return CpuCaps(model=platform.processor() or "unknown", flags=frozenset())


# ---- which dtype vLLM's CPU build serves each kind of model at ----

QUANT_KINDS = (None, "int8-w8a8", "awq")


def model_quantization(model_dir: Path | str) -> str | None:
    """The kind of quantized checkpoint in an HF folder: 'int8-w8a8', 'awq', another
    `quant_method` as written, or None (unquantized, or not a local folder)."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    qcfg = json.loads(path.read_text()).get("quantization_config")
    if not qcfg:
        return None
    method = str(qcfg.get("quant_method", "unknown")).lower()
    if method == "compressed-tensors" and _is_int8_w8a8(qcfg):
        return "int8-w8a8"
    return method


def _is_int8_w8a8(qcfg: dict) -> bool:
    """compressed-tensors with 8-bit integer weights and 8-bit integer input activations."""
    for group in (qcfg.get("config_groups") or {}).values():
        weights, acts = group.get("weights") or {}, group.get("input_activations") or {}
        if (
            weights.get("num_bits") == 8
            and weights.get("type", "int") == "int"
            and acts.get("num_bits") == 8
            and acts.get("type", "int") == "int"
        ):
            return True
    return False


def vllm_cpu_dtype(quant: str | None, caps: CpuCaps) -> str:
    """The `--dtype` vLLM's CPU build needs for a model quantized as `quant` on `caps`.

    Unquantized -> float32 (the reference the lessons compare against). INT8 W8A8 -> bfloat16
    where AMX tiles exist (the AMX int8 kernel takes 16-bit activations only), else float32.
    AWQ and any other weight-quantized format -> bfloat16 (their CPU kernels compute in 16 bits).
    """
    if quant is None:
        return "float32"
    if quant == "int8-w8a8":
        return "bfloat16" if caps.amx else "float32"
    return "bfloat16"
