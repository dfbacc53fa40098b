"""One model on one accelerator: every number of the lab in one dict, and its printout."""

from __future__ import annotations

from week2_serving.arith.hardware import Accelerator
from week2_serving.arith.model import DTYPE_BYTES, ModelShape
from week2_serving.arith.roofline import (
    Step,
    cost_per_million_tokens,
    decode_step,
    max_sequences,
    prefill_step,
    utilisation,
)


def step_row(step: Step, acc: Accelerator, gpus: int) -> dict:
    return {
        "flops": step.flops,
        "bytes": step.bytes,
        "intensity_flops_per_byte": step.intensity,
        "bound": step.bound(acc),
        "time_ms": 1e3 * step.time(acc),
        "tokens_per_s": step.tokens_per_s(acc),
        "usd_per_million_tokens": cost_per_million_tokens(
            acc.price_per_hour, step.tokens_per_s(acc), gpus
        ),
    }


def analyse(
    m: ModelShape,
    acc: Accelerator,
    context: int,
    batches: list[int],
    prompt: int,
    dtype: str = "bfloat16",
    tp: int = 1,
    memory_fraction: float = 0.9,
    measured_tokens_per_s: float | None = None,
) -> dict:
    """Sizes, capacity, decode/prefill rooflines and (given a measured rate) MFU/MBU and cost.

    A measured rate is taken as decode at the largest batch of `batches` and `context`."""
    out: dict = {
        "model": m.name,
        "accelerator": {"key": acc.key, "name": acc.name, "source": acc.source},
        "context": context,
        "tp": tp,
        "dtype": dtype,
        "params": m.params(),
        "weight_bytes": {d: m.params() * b for d, b in DTYPE_BYTES.items()},
        "weight_bytes_per_gpu": m.weight_bytes(dtype) / tp,
        "kv_bytes_per_token": m.kv_bytes_per_token(dtype, tp),
        "kv_bytes_per_sequence": context * m.kv_bytes_per_token(dtype, tp),
        "max_sequences": max_sequences(
            m, acc, context, dtype, tp=tp, memory_fraction=memory_fraction
        ),
        "ridge_flops_per_byte": acc.ridge,
        "decode": {b: step_row(decode_step(m, b, context, dtype, tp=tp), acc, tp) for b in batches},
        "prefill": step_row(prefill_step(m, prompt, dtype=dtype, tp=tp), acc, tp),
        "prompt": prompt,
    }
    for b, row in out["decode"].items():
        row["fits_in_memory"] = b <= out["max_sequences"]
    if measured_tokens_per_s is not None:
        b = max(batches)
        u = utilisation(m, acc, measured_tokens_per_s, b, context, dtype, tp)
        cost = cost_per_million_tokens(acc.price_per_hour, measured_tokens_per_s, tp)
        out["measured"] = {"tokens_per_s": measured_tokens_per_s, "batch": b, **u}
        out["measured"]["usd_per_million_tokens"] = cost
    return out


def _gb(n: float) -> str:
    """Bytes in the largest decimal unit that keeps a digit before the point."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} bytes"


def report_lines(r: dict) -> list[str]:
    """The analysis as the lab prints it."""
    acc = r["accelerator"]["name"]
    lines = [
        f"{r['model']} on {acc} (tp={r['tp']}, {r['dtype']}, context {r['context']:,})",
        f"  parameters            {r['params']:,} ({r['params'] / 1e9:.2f} B)",
        "  weights               "
        + ", ".join(f"{d} {_gb(b)}" for d, b in r["weight_bytes"].items()),
        f"  weights per GPU       {_gb(r['weight_bytes_per_gpu'])}",
        f"  KV per token          {r['kv_bytes_per_token']:,.0f} bytes",
        f"  KV per sequence       {_gb(r['kv_bytes_per_sequence'])}",
        f"  max sequences         {r['max_sequences']}",
        f"  ridge point           {r['ridge_flops_per_byte']:.0f} FLOPs/byte",
    ]
    for b, d in r["decode"].items():
        lines.append(
            f"  decode batch {b:<5}    {d['intensity_flops_per_byte']:8.1f} FLOPs/B, "
            f"{d['bound']}-bound, {d['time_ms']:.2f} ms/step, {d['tokens_per_s']:,.0f} tok/s, "
            f"${d['usd_per_million_tokens']:.3f}/1M tok"
            + ("" if d["fits_in_memory"] else f" (does NOT fit: max {r['max_sequences']})")
        )
    p = r["prefill"]
    lines.append(
        f"  prefill {r['prompt']} tokens  {p['intensity_flops_per_byte']:8.1f} FLOPs/B, "
        f"{p['bound']}-bound, {p['time_ms']:.1f} ms, {p['tokens_per_s']:,.0f} tok/s"
    )
    if "measured" in r:
        m = r["measured"]
        lines.append(
            f"  measured {m['tokens_per_s']:,.1f} tok/s at batch {m['batch']}: "
            f"MFU {100 * m['mfu']:.2f}%, MBU {100 * m['mbu']:.1f}%, "
            f"${m['usd_per_million_tokens']:.3f}/1M tok"
        )
    return lines
