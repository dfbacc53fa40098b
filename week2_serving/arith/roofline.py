"""Inference arithmetic: what fits, how fast it can go, what it costs.

Decode reads every weight once per step and produces one token per sequence in the batch, so
its arithmetic intensity (FLOPs per byte moved) is about the batch size: far below an H100's
ridge (~300 FLOPs/byte) it is memory-bound. Prefill multiplies the same weights by hundreds of
prompt tokens at once: compute-bound. The roofline says which roof a step hits:

    time = max(FLOPs / peak FLOP/s, bytes / bandwidth)

MFU (model FLOPs utilisation) and MBU (model bandwidth utilisation) say how close a measured
run came to the compute roof and the memory roof.
"""

from __future__ import annotations

from dataclasses import dataclass

from week2_serving.arith.hardware import Accelerator
from week2_serving.arith.model import ModelShape, check_positive


@dataclass(frozen=True)
class Step:
    """The work of one forward step: FLOPs and bytes moved, for one GPU of `tp`."""

    flops: float
    bytes: float
    tokens: int  # tokens produced (decode) or processed (prefill)

    @property
    def intensity(self) -> float:
        return self.flops / self.bytes

    def time(self, acc: Accelerator) -> float:
        """Seconds on `acc` by the roofline: the slower of the two roofs."""
        return max(self.flops / acc.peak_flops, self.bytes / acc.bandwidth)

    def bound(self, acc: Accelerator) -> str:
        return "compute" if self.intensity >= acc.ridge else "memory"

    def tokens_per_s(self, acc: Accelerator) -> float:
        return self.tokens / self.time(acc)


def decode_step(
    m: ModelShape,
    batch: int,
    context: int,
    dtype: str = "bfloat16",
    kv_dtype: str = "",
    tp: int = 1,
) -> Step:
    """One decode step: `batch` sequences, each one new token over `context` cached tokens.

    Bytes: every weight once (shared by the batch) + each sequence's KV cache."""
    check_positive("batch", batch, integer=True)
    check_positive("context", context, integer=True)
    weights = m.weight_bytes(dtype) / tp
    kv = batch * context * m.kv_bytes_per_token(kv_dtype or dtype, tp)
    flops = batch * m.flops_per_token(context) / tp
    return Step(flops=flops, bytes=weights + kv, tokens=batch)


def prefill_step(
    m: ModelShape, prompt: int, batch: int = 1, dtype: str = "bfloat16", tp: int = 1
) -> Step:
    """Prefill of `batch` prompts of `prompt` tokens: causal attention sees on average half
    the prompt; bytes are the weights once + the KV cache written."""
    check_positive("prompt", prompt, integer=True)
    check_positive("batch", batch, integer=True)
    tokens = batch * prompt
    flops = tokens * m.flops_per_token(prompt / 2) / tp
    bytes_ = m.weight_bytes(dtype) / tp + tokens * m.kv_bytes_per_token(dtype, tp)
    return Step(flops=flops, bytes=bytes_, tokens=tokens)


def max_sequences(
    m: ModelShape,
    acc: Accelerator,
    context: int,
    dtype: str = "bfloat16",
    kv_dtype: str = "",
    tp: int = 1,
    memory_fraction: float = 0.9,
) -> int:
    """Sequences of `context` tokens whose KV cache fits beside the weights on each GPU.

    `memory_fraction` is the share of memory the server may use (vLLM's
    --gpu-memory-utilization); activations and CUDA graphs are ignored, so a real server
    fits somewhat fewer. 0 means the weights alone do not fit."""
    check_positive("context", context, integer=True)
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction!r}")
    free = acc.memory * memory_fraction - m.weight_bytes(dtype) / tp
    per_seq = context * m.kv_bytes_per_token(kv_dtype or dtype, tp)
    return max(int(free // per_seq), 0)


def utilisation(
    m: ModelShape,
    acc: Accelerator,
    tokens_per_s: float,
    batch: int,
    context: int,
    dtype: str = "bfloat16",
    tp: int = 1,
) -> dict[str, float]:
    """MFU and MBU of a measured decode run: `tokens_per_s` generated over all sequences,
    `batch` sequences at a time, `context` tokens cached on average, on `tp` GPUs.

    MFU = FLOP/s achieved / peak; MBU = bytes/s achieved / bandwidth, where a step moves the
    weights once and every sequence's KV cache."""
    check_positive("tokens_per_s", tokens_per_s)
    step = decode_step(m, batch, context, dtype, tp=tp)
    steps_per_s = tokens_per_s / batch
    return {
        "mfu": steps_per_s * step.flops / acc.peak_flops,
        "mbu": steps_per_s * step.bytes / acc.bandwidth,
        "achieved_tflops": steps_per_s * step.flops / 1e12,
        "achieved_gbs": steps_per_s * step.bytes / 1e9,
    }


def cost_per_million_tokens(price_per_hour: float, tokens_per_s: float, gpus: int = 1) -> float:
    """USD per 1M tokens for `gpus` accelerators at `price_per_hour` each."""
    check_positive("price_per_hour", price_per_hour)
    check_positive("tokens_per_s", tokens_per_s)
    check_positive("gpus", gpus, integer=True)
    return price_per_hour * gpus / (tokens_per_s * 3600) * 1e6


def fits_in_cache(m: ModelShape, cache_bytes: int, dtype: str = "float32") -> bool:
    """Whether all weights fit in a CPU's last-level cache: then decode reads them from cache,
    and the memory roof is the cache bandwidth, not DRAM's."""
    return m.weight_bytes(dtype) <= cache_bytes
