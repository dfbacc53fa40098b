"""Quantized KV cache formats: int8 and fp8 (e4m3), one scale per token per head.

The KV pool is most of a server's memory: at a fixed budget, bytes per element decide how many
sequences fit at once. Storing K and V in 8 bits instead of 32 (or 16) holds about 4x (2x) as
many tokens, for a small error in what attention reads back.

Each token's key (and value) for one head is a row x of D numbers. We store

    scale = max|x| / QMAX              (one float32 per token per head)
    q     = x / scale, rounded to the storage type (int8: round and clamp to [-127, 127];
                                                   fp8 e4m3: the nearest e4m3 number, |q| <= 448)

and read back x_hat = q * scale (symmetric absmax: no zero point; K and V rows are centred
enough that one is not worth its bytes). Per-token scales need no calibration and follow each
token's own range, so one outlier token does not blur the others (KIVI, KVQuant and vLLM's
fp8 cache make other choices: per-channel keys, per-tensor scales).

Error bounds, relative to the row's largest magnitude max|x|, for finite inputs:
- int8: round-to-nearest is off by at most half a step, |x - x_hat| <= scale / 2 = max|x| / 254;
- fp8 e4m3: 3 mantissa bits, so at most 2^-4 of |q| in the normal range (and 2^-10 absolute
  below it): |x - x_hat| <= max|x| / 16.
A zero row gets scale 0 and reads back as zeros; non-finite inputs are outside the contract
(a model that produces inf has already failed).

Shapes: (..., D) rows in, (..., D) codes and (...) scales out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVFormat:
    """How one quantized KV dtype stores a row: its storage type and its largest code."""

    name: str  # the --kv-cache-dtype value
    storage: torch.dtype  # what the pool holds
    qmax: float  # largest magnitude a code may take
    rel_error: float  # the bound above: max |x - x_hat| / max |x| per row
    scale_dtype: torch.dtype = torch.float32  # one scale per token per head


def _fp8() -> torch.dtype | None:
    return getattr(torch, "float8_e4m3fn", None)  # absent from old torch builds


FORMATS: dict[str, KVFormat] = {"int8": KVFormat("int8", torch.int8, 127.0, 1 / 254)}
if _fp8() is not None:
    FORMATS["fp8"] = KVFormat("fp8", _fp8(), torch.finfo(_fp8()).max, 1 / 16)

KV_CACHE_DTYPES = ("auto", "int8", "fp8")  # auto: the model's dtype, unquantized


def quantize(x: torch.Tensor, fmt: KVFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows x (..., D) -> codes (..., D) in fmt.storage and scales (...) in fmt.scale_dtype."""
    # LAB:kv-int8 begin
    # HINT: in float32: scale = max |x| over the last dim / fmt.qmax, one per row (shape (...)).
    # HINT: divide by the scale (a zero row: divide by 1, codes 0), clamp to [-qmax, qmax],
    # HINT: round when the storage is int8; return codes in fmt.storage, scales in fmt.scale_dtype.
    xf = x.to(torch.float32)
    scale = xf.abs().amax(dim=-1) / fmt.qmax  # (...)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # a zero row: codes 0
    y = (xf / safe.unsqueeze(-1)).clamp(-fmt.qmax, fmt.qmax)  # (..., D) in [-qmax, qmax]
    if fmt.storage == torch.int8:
        y = y.round()
    return y.to(fmt.storage), scale.to(fmt.scale_dtype)
    # LAB:kv-int8 end


def dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Codes (..., D) and scales (...) -> rows (..., D) in `dtype` (the compute dtype)."""
    # LAB:kv-int8 begin
    # HINT: codes times their row's scale (unsqueeze the last dim), in float32, then to `dtype`.
    return (q.to(torch.float32) * scale.to(torch.float32).unsqueeze(-1)).to(dtype)
    # LAB:kv-int8 end


def get_format(name: str) -> KVFormat:
    """The format of a quantized --kv-cache-dtype; a clear error for anything else."""
    if name not in FORMATS:
        known = ", ".join(FORMATS) or "none"
        raise ValueError(f"kv_cache_dtype={name!r} is not a quantized format here; use {known}")
    return FORMATS[name]


def check_kv_cache_dtype(name: str, device: torch.device | str) -> None:
    """Refuse a KV dtype this torch cannot store or read back on `device`, before weights load.

    A short probe runs every op the pool uses (quantize, a write through a byte view, an
    index_select, dequantize): a missing kernel shows up here as an error naming the device,
    not as a crash in the middle of serving.
    """
    if not isinstance(name, str) or name not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype={name!r}: use one of {', '.join(KV_CACHE_DTYPES)}")
    if name == "auto":
        return
    if name not in FORMATS:
        raise ValueError(
            f"kv_cache_dtype={name!r}: torch {torch.__version__} has no float8_e4m3fn; "
            f"use int8 or auto"
        )
    fmt = FORMATS[name]
    try:
        x = torch.randn(4, 2, 8, device=device)
        q, s = quantize(x, fmt)
        pool = torch.zeros(8, 2, 8, dtype=fmt.storage, device=device)
        slots = torch.tensor([1, 3, 5, 7], device=device)
        pool.view(torch.uint8).index_copy_(0, slots, q.view(torch.uint8))
        back = dequantize(pool.index_select(0, slots), s, torch.float32)
        ok = bool(torch.isfinite(back).all())
    except (RuntimeError, TypeError, NotImplementedError) as e:
        raise ValueError(
            f"kv_cache_dtype={name!r} is not supported on device {device} by torch "
            f"{torch.__version__} ({e}); use int8 or auto"
        ) from None
    if not ok:
        raise ValueError(f"kv_cache_dtype={name!r} reads back non-finite values on {device}")
