"""Paged attention as one C++ op on the CPU, reading K/V in place (`csrc/paged_attention.cpp`),
and the fused RMSNorm ops built with it.

The default attention (attention.py) copies each group's keys and values out of the pool into
a padded tensor (`index_select`), builds a mask, and calls SDPA once per group: decodes of
similar context length together, each prefill chunk alone. That is a dozen tensor ops per
group per layer, and on a server whose requests arrived at different times the decodes spread
over several context buckets. This op does the whole step in one call per layer: for each row
(any mix of decodes and prefill chunks) and K/V head, it walks the sequence's block table and
reads every key and value where it lies, with no copy, no padding and no mask. It is what
vLLM's CPU backend and PagedAttention's kernels do; here it is small enough to read.

The op is compiled on first use with the machine's C++ compiler (torch.utils.cpp_extension,
about a minute, cached under torch's extensions folder; the build is named after the source,
torch's version and the CPU's instruction set, since it is compiled for this CPU). Where no
compiler or header is there, `unavailable_reason()` says why and the engine refuses
--paged-kernel with it (the SDPA path needs nothing built).
"""

from __future__ import annotations

import hashlib
import platform
from functools import cache
from pathlib import Path

import torch

from common.cpu import cpu_caps

SOURCE = Path(__file__).parent / "csrc" / "paged_attention.cpp"


def cpu_features() -> str:
    """The CPU's model and instruction-set flags (common.cpu), as one string."""
    caps = cpu_caps()
    return " ".join([caps.model, platform.machine(), *sorted(caps.flags)])


@cache
def load():
    """The compiled module (its `paged_attention` op); raises when it cannot be built."""
    from torch.utils.cpp_extension import load as build

    key = SOURCE.read_bytes() + torch.__version__.encode() + cpu_features().encode()
    name = "ie_paged_attention_" + hashlib.sha256(key).hexdigest()[:12]
    return build(name=name, sources=[str(SOURCE)], extra_cflags=["-O3", "-march=native"])


def unavailable_reason() -> str | None:
    """None when the op builds and loads here; else why not (the engine then uses SDPA)."""
    try:
        load()
    except Exception as e:  # no compiler, no Python headers, a build error: said, not fatal
        return f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    return None


def paged_attention(
    q: torch.Tensor,  # (N, H, D) this step's queries
    k_pool: torch.Tensor,  # (S, Hkv, D) one layer's keys
    v_pool: torch.Tensor,  # (S, Hkv, D)
    tables: torch.Tensor,  # (B, M) int64 block tables, padded with any valid block id
    seq_of_row: torch.Tensor,  # (N,) int64 the sequence of each row
    positions: torch.Tensor,  # (N,) int64 each row's position: it sees keys 0..position
    block_size: int,
) -> torch.Tensor:  # (N, H, D)
    """Causal attention of every row over its own sequence's keys, read from the pool."""
    scale = q.shape[-1] ** -0.5
    return load().paged_attention(
        q, k_pool, v_pool, tables, seq_of_row, positions, block_size, scale
    )


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of (N, C) rows in one call (float32 inside, rounded as models.layers.rms_norm)."""
    return load().rms_norm(x, w, eps)


def add_rms_norm(x: torch.Tensor, d: torch.Tensor, w: torch.Tensor, eps: float):
    """The residual add and the next RMSNorm in one call: (x + d, rms_norm(x + d))."""
    return load().add_rms_norm(x, d, w, eps)
