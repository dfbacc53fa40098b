"""The report's "which roof applies" section, from the inference arithmetic lab (week2_serving/arith).

A decode step reads every weight once. If all of the served model's weights fit in the CPU's
last-level cache, after the first step they are read from the cache, not from DRAM: the memory
roof is then the cache's bandwidth, several times DRAM's, and a tiny model can "beat" a DRAM
roofline (MBU over 100%) without any contradiction. This section says, per server setting,
whether the weights fit (`arith.roofline.fits_in_cache` against the sizes sysfs reports),
measures both bandwidths with the lab's one-thread copy (`arith.cpu_bandwidth`), and puts the
busiest cell of each setting on the roofline that applies, with both roofs: memory (the
applicable bandwidth) and compute (the CPU row of the lab's accelerator table).
"""

from __future__ import annotations

import json
from pathlib import Path

from common.report import md_table
from week2_serving.arith.cpu_bandwidth import cache_sizes, copy_bandwidth
from week2_serving.arith.hardware import get_accelerator
from week2_serving.arith.model import DTYPE_BYTES, ModelShape, load_shape
from week2_serving.arith.roofline import decode_step, fits_in_cache

CPU_ROW = "cpu-2core"  # the lab's accelerator row whose peak FLOP/s is the compute roof here


def served_shape(cell: dict) -> tuple[ModelShape, str] | None:
    """The served model's shape and weight dtype (None: no local config.json to read)."""
    server = cell.get("server", {})
    folder = Path(server.get("model") or cell.get("tokenizer_id", ""))
    if not (folder / "config.json").is_file():
        return None
    try:
        m = load_shape(str(folder))
    except ValueError:
        return None
    cfg = json.loads((folder / "config.json").read_text())
    for dtype in (server.get("dtype"), cfg.get("torch_dtype"), cfg.get("dtype")):
        if dtype in DTYPE_BYTES:  # the engine's --dtype first, then the checkpoint's
            return m, dtype
    return m, "float32"


def which_roof(m: ModelShape, dtype: str, llc_bytes: int) -> tuple[bool | None, str]:
    """(fits, roof): whether the weights fit in a last-level cache of `llc_bytes` (None when
    the size is unknown) and the memory roof that applies, "cache" or "DRAM"."""
    if llc_bytes <= 0:
        return None, "DRAM"
    fits = fits_in_cache(m, llc_bytes, dtype)
    return fits, "cache" if fits else "DRAM"


def roof_rows(
    cells: list[dict], servers: list[str], dram_gbs: float, cache_gbs: float, llc_bytes: int
) -> list[list]:
    """One row per server setting: its busiest cell against the roof that applies."""
    cpu = get_accelerator(CPU_ROW)
    rows = []
    for s in servers:
        mine = [c for c in cells if c["server_name"] == s and c.get("completed")]
        c = max(mine, key=lambda c: c["output_throughput"]) if mine else None
        shape = served_shape(c) if c else None
        if shape is None:
            continue
        m, dtype = shape
        fits, roof = which_roof(m, dtype, llc_bytes)
        bw = cache_gbs if roof == "cache" else dram_gbs
        batch = int(c.get("max_concurrency") or c["num_prompts"])
        context = (c["total_input_tokens"] + c["total_output_tokens"] / 2) / c["completed"]
        step = decode_step(m, batch, max(1, round(context)), dtype)
        here = cpu.with_bandwidth(bw * 1e9, f"{roof} copy measured on this machine")
        ceiling, bound = step.tokens_per_s(here), step.bound(here)
        rows.append([
            s, f"{m.weight_bytes(dtype) / 1e6:.1f} MB ({dtype})",
            "unknown" if fits is None else ("yes" if fits else "no"),
            f"{roof}, {bw:.1f} GB/s", f"{c['load_name']} (batch {batch})",
            f"{c['output_throughput']:.0f}", f"{ceiling:.0f} ({bound}-bound)",
            f"{100 * c['output_throughput'] / ceiling:.0f}%",
        ])  # fmt: skip
    return rows


def roof_section(
    cells: list[dict],
    servers: list[str],
    dram_gbs: float,
    cache_gbs: float | None = None,
    llc_bytes: int | None = None,
) -> str | None:
    """Markdown: does each setting's model fit in the last-level cache, which roof applies,
    and the busiest cell's place under it. Measures the cache bandwidth and reads the cache
    sizes when not given; None when no cell's model has a local config.json."""
    llc = max(cache_sizes().values(), default=0) if llc_bytes is None else llc_bytes
    if cache_gbs is None:  # the lab's in-cache array (measure_cpu's default): stays in cache
        cache_gbs = copy_bandwidth(256 * 2**10)["bytes_per_s"] / 1e9
    rows = roof_rows(cells, servers, dram_gbs, cache_gbs, llc)
    if not rows:
        return None
    size = f"{llc / 2**20:.1f} MiB" if llc else "unknown (sysfs does not say)"
    head = ["server", "weights", "fit in LLC?", "memory roof that applies", "busiest cell"]
    head += ["measured tok/s", "ceiling tok/s", "of ceiling"]
    return "\n".join([
        f"Last-level cache: {size}. DRAM bandwidth {dram_gbs:.1f} GB/s (the table above), "
        f"in-cache copy {cache_gbs:.1f} GB/s (one thread, `week2_serving.arith.cpu_bandwidth`). "
        "Weights that fit in the last-level cache are read from it at every decode step, so "
        "the cache bandwidth is the memory roof; otherwise DRAM's. The compute roof is the "
        f"`{CPU_ROW}` row of the arithmetic lab's accelerator table "
        "(`python -m week2_serving.arith --measure-cpu` for the whole analysis).\n",
        md_table(head, rows),
    ])  # fmt: skip
