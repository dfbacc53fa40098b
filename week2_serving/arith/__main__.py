"""Inference arithmetic over any Hugging Face `config.json`: sizes, KV cache, what fits, the
decode and prefill rooflines, MFU/MBU of a measured run, cost per 1M tokens.

    python -m week2_serving.arith                                   # Llama-3.1-8B on an H100
    python -m week2_serving.arith --config llama-3.1-70b --tp 4     # 70B over four H100s
    python -m week2_serving.arith --config runs/week1/hf-model --accelerator cpu-2core \\
        --dtype float32 --measure-cpu                                # this CPU, measured
    python -m week2_serving.arith --tokens-per-s 1800 --batch 1 64   # MFU/MBU of a run

Writes results.json and roofline.png to runs/week2/arith-<model>/ (or --out). The worked
examples and the exercises are in week2_serving/arith/LESSON.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.cli import parse
from common.results import run_dir, write_results
from week2_serving.arith.hardware import get_accelerator
from week2_serving.arith.model import dtype_bytes, load_shape
from week2_serving.arith.plot import plot_roofline
from week2_serving.arith.roofline import decode_step, fits_in_cache, prefill_step
from week2_serving.arith.summary import analyse, report_lines


@dataclass
class ArithConfig:
    config: str = "llama-3.1-8b"  # a shipped name, a config.json, a model folder or a hub id
    accelerator: str = "h100-sxm"  # a key of data/accelerators.json
    context: int = 8192  # tokens per sequence (prompt + output) held in the KV cache
    batch: list[int] = field(default_factory=lambda: [1, 8, 64])  # decode batch sizes
    prompt: int = 2048  # prefill length (tokens)
    dtype: str = "bfloat16"  # weights and KV cache: float32, bfloat16, float16, fp8, int8, int4
    tp: int = 1  # tensor-parallel GPUs (weights and K/V heads split across them)
    memory_fraction: float = 0.9  # share of memory the server may use (vLLM's default)
    tokens_per_s: float | None = None  # a measured decode rate at the largest batch: MFU/MBU
    price_per_hour: float | None = None  # USD per accelerator-hour (default: the table's)
    measure_cpu: bool = False  # measure this CPU's DRAM and cache bandwidth, use it as the roof
    out: Path | None = None  # folder for results.json + roofline.png (default runs/week2/arith-*)

    def __post_init__(self) -> None:
        dtype_bytes(self.dtype)
        for name in ("context", "prompt", "tp"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"--{name} must be a whole number > 0, got {value!r}")
        if not self.batch or any(isinstance(b, bool) or b <= 0 for b in self.batch):
            raise ValueError(f"--batch needs whole numbers > 0, got {self.batch!r}")
        if not 0 < self.memory_fraction <= 1:
            raise ValueError(f"--memory-fraction must be in (0, 1], got {self.memory_fraction}")
        for name in ("tokens_per_s", "price_per_hour"):
            value = getattr(self, name)
            if value is not None and not (0 < value < float("inf")):
                raise ValueError(f"--{name.replace('_', '-')} must be finite and > 0, got {value}")


def cpu_part(cfg: ArithConfig, m, acc) -> tuple[dict, object]:
    """Measure this CPU, put its DRAM bandwidth in the roof, say whether the weights fit in
    the last-level cache (then the cache bandwidth is the roof that applies)."""
    from week2_serving.arith.cpu_bandwidth import measure_cpu

    cpu = measure_cpu()
    acc = acc.with_bandwidth(cpu["dram"]["bytes_per_s"], "measured on this machine (copy)")
    llc = max(cpu["cache_sizes"].values(), default=0)
    fits = bool(llc) and fits_in_cache(m, llc, cfg.dtype)
    step = decode_step(m, 1, cfg.context, cfg.dtype)
    cpu["weights_fit_in_last_level_cache"] = fits
    cpu["last_level_cache_bytes"] = llc
    cpu["decode_batch1_tokens_per_s_dram_roof"] = 1 / max(
        step.flops / acc.peak_flops, step.bytes / cpu["dram"]["bytes_per_s"]
    )
    cpu["decode_batch1_tokens_per_s_cache_roof"] = 1 / max(
        step.flops / acc.peak_flops, step.bytes / cpu["cache"]["bytes_per_s"]
    )
    return cpu, acc


def main(cfg: ArithConfig) -> dict:
    try:
        m, acc = load_shape(cfg.config), get_accelerator(cfg.accelerator)
    except ValueError as e:
        raise SystemExit(f"arith: {e}") from None
    if cfg.price_per_hour is not None:
        acc = type(acc)(**{**acc.__dict__, "price_per_hour": cfg.price_per_hour})
    cpu = None
    if cfg.measure_cpu:
        cpu, acc = cpu_part(cfg, m, acc)
    r = analyse(m, acc, cfg.context, sorted(set(cfg.batch)), cfg.prompt, cfg.dtype, cfg.tp,
                cfg.memory_fraction, cfg.tokens_per_s)  # fmt: skip
    lines = report_lines(r)
    if cpu is not None:
        r["cpu"] = cpu
        where = "fit" if cpu["weights_fit_in_last_level_cache"] else "do NOT fit"
        lines.append(
            f"  this CPU: DRAM {cpu['dram']['bytes_per_s'] / 1e9:.1f} GB/s, cache "
            f"{cpu['cache']['bytes_per_s'] / 1e9:.1f} GB/s; the weights {where} in the "
            f"{cpu['last_level_cache_bytes'] / 2**20:.0f} MiB last-level cache"
        )
        roof = "cache" if cpu["weights_fit_in_last_level_cache"] else "DRAM"
        lines.append(
            f"  decode batch 1 ceiling: {cpu['decode_batch1_tokens_per_s_dram_roof']:,.0f} tok/s "
            f"from DRAM, {cpu['decode_batch1_tokens_per_s_cache_roof']:,.0f} tok/s from cache: "
            f"the {roof} roof applies"
        )
    print("\n".join(lines))
    out = cfg.out or run_dir("week2", "arith-" + Path(m.name).name.replace(".json", ""))
    points = {
        f"decode b={b}": decode_step(m, b, cfg.context, cfg.dtype, tp=cfg.tp) for b in cfg.batch
    }
    points[f"prefill {cfg.prompt}"] = prefill_step(m, cfg.prompt, dtype=cfg.dtype, tp=cfg.tp)
    cache_bw = cpu["cache"]["bytes_per_s"] if cpu else 0
    plot_roofline(acc, points, Path(out) / "roofline.png", f"{m.name} on {acc.name}", cache_bw)
    r["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in cfg.__dict__.items()}
    write_results(Path(out) / "results.json", r)
    return r


if __name__ == "__main__":
    main(parse(ArithConfig, description=__doc__))
