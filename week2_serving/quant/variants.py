"""The quantization variants, in one table: to add a variant, add one `Variant` to VARIANTS.

Each entry says everything the rest of the package needs to know about a variant:
- how it is made: the venv whose python runs its worker, the worker module, the `make` target
  that installs that venv, and any flags the worker needs from the model (`worker_flags`);
- how it is served: the quantization vLLM finds in its config.json (common.cpu's name), and a
  fixed `--dtype` or None to let common.cpu decide what vLLM's CPU build needs on this CPU;
- what it is compared with: the unquantized weights served at the same dtype (`compared_with`);
- its label, for tables and --help.

`python -m week2_serving.quant.quantize` makes the variants that have a worker;
`python -m week2_serving.quant.quality` serves every variant and measures its quality. Both
take their choices, defaults and error messages from this table.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from common.cpu import CpuCaps, cpu_caps, vllm_cpu_dtype
from common.results import REPO_ROOT

VENVS = REPO_ROOT / ".venvs"
REFERENCE = "fp32"  # every variant's quality is measured against this one (or its dtype twin)


@dataclass(frozen=True)
class Variant:
    name: str  # folder name under runs/week2/quantized/, served model name, table row
    label: str  # one line: what is quantized, by which tool, served at which dtype
    # the quantization vLLM reads from the checkpoint (common.cpu.model_quantization's names);
    # None: unquantized weights (the week 1 export itself)
    quantization: str | None = None
    dtype: str | None = None  # always served at this --dtype; None: common.cpu decides
    python: Path | None = None  # the venv python that runs the worker (None: nothing to make)
    worker: str | None = None  # the worker module, run as `python -m` in that venv
    make_target: str | None = None  # `make <target>` installs what the worker needs
    # (model config.json, --group-size asked for) -> extra worker flags; raises ValueError
    worker_flags: Callable[[dict, int | None], list[str]] | None = None

    @property
    def quantized(self) -> bool:
        """Quantized weights, in their own folder (runs/week2/quantized/<name>)."""
        return self.quantization is not None


# ---- AWQ's one model-dependent setting: the group size ----


def linear_in_features(config: dict) -> list[int]:
    """The input widths of a Llama block's Linear layers: hidden size (q/k/v/o, gate/up) and
    the MLP's intermediate size (down_proj)."""
    for key in ("hidden_size", "intermediate_size"):
        if key not in config:
            raise ValueError(f"config.json has no {key!r}: is this a Llama-architecture model?")
    return [config["hidden_size"], config["intermediate_size"]]


def pick_group_size(config: dict, preferred: tuple[int, ...] = (128, 64, 32)) -> int:
    """The largest preferred AWQ group size that divides every Linear layer's input width.

    A group shares one scale and zero point along the input dimension, so it must tile it:
    the week 1 model has widths 256 and 704 = 11·64, so 128 does not fit (704/128 = 5.5) and
    64 is the largest that does (fewer groups than 32: less scale overhead, same kernel).
    """
    widths = linear_in_features(config)
    for g in preferred:
        if all(w % g == 0 for w in widths):
            return g
    raise ValueError(
        f"no AWQ group size in {preferred} divides the Linear input widths {widths}; "
        "pass --group-size with a divisor of all of them"
    )


def group_size_flags(config: dict, group_size: int | None) -> list[str]:
    """`--group-size G`: the one asked for if it tiles every input width, else the one picked."""
    group = group_size or pick_group_size(config)
    widths = linear_in_features(config)
    if any(w % group for w in widths):
        raise ValueError(
            f"AWQ group size {group} does not divide the Linear input widths {widths}; "
            f"use a divisor of all of them (e.g. {pick_group_size(config)})"
        )
    return ["--group-size", str(group)]


# ---- the table ----

VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("fp32", "the week 1 weights, float32: the reference", dtype="float32"),
        Variant(
            "bf16",
            "the same weights served in bfloat16: the control for 16-bit arithmetic",
            dtype="bfloat16",
        ),
        Variant(
            "int8-w8a8",
            "int8 weights and activations (llm-compressor SmoothQuant + GPTQ); bfloat16 around "
            "the int8 matmuls where the CPU has AMX tiles, float32 elsewhere",
            quantization="int8-w8a8",
            python=VENVS / "quant" / "bin" / "python",
            worker="week2_serving.quant.w8a8_worker",
            make_target="setup-quant",
        ),
        Variant(
            "int4-awq",
            "int4 weights in groups, activation-aware scales (autoawq); bfloat16 activations "
            "on every CPU (vLLM's AWQ kernels)",
            quantization="awq",
            python=VENVS / "vllm" / "bin" / "python",
            worker="week2_serving.quant.awq_worker",
            make_target="setup-awq",
            worker_flags=group_size_flags,
        ),
    )
}
# the unquantized variant served at each dtype: what a quantized variant is compared with
UNQUANTIZED_AT = {v.dtype: v.name for v in VARIANTS.values() if not v.quantized and v.dtype}


def quantized_names() -> list[str]:
    """The variants a worker makes, in table order."""
    return [v.name for v in VARIANTS.values() if v.worker is not None]


def check_names(names: Iterable[str], quantized_only: bool = False) -> list[str]:
    """`names` as a list (an item may hold several, comma-separated), each one in the table."""
    out = [n for item in names for n in str(item).split(",") if n]
    allowed = quantized_names() if quantized_only else list(VARIANTS)
    bad = [n for n in out if n not in allowed]
    if bad:
        what = "not made by a quantizer" if quantized_only else "unknown variant(s)"
        raise ValueError(
            f"{what}: {bad}; choose from {allowed} (the table in week2_serving/quant/variants.py)"
        )
    return out


def serve_dtype(variant: str, caps: CpuCaps | None = None, cuda: bool = False) -> str:
    """The `--dtype` a variant is served at; quantized ones on a GPU: vLLM's 'auto'."""
    v = VARIANTS[variant]
    if v.dtype:
        return v.dtype
    return "auto" if cuda else vllm_cpu_dtype(v.quantization, caps or cpu_caps())


def serve_args(variant: str, caps: CpuCaps | None = None, cuda: bool = False) -> list[str]:
    """The vLLM flags for serving `variant` (vLLM reads the quantization from config.json)."""
    dtype = serve_dtype(variant, caps, cuda)
    return [] if dtype == "auto" else ["--dtype", dtype]


def compared_with(variant: str, dtype: str, ok: set[str]) -> str:
    """The unquantized variant served at `dtype` if it ran (`ok`), else the fp32 reference."""
    same = UNQUANTIZED_AT.get(dtype)
    return same if same in ok and VARIANTS[variant].quantized else REFERENCE
