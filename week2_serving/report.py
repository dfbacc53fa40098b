"""Week 2's sweep report: the harness's one-page report with week 2's extra sections.

    python -m week2_serving.report runs/week2/sweep-cpu --gpu-hour-usd 2.0

The harness (week2_serving/harness/report.py) writes the tables, plots and roofline of any
sweep and knows nothing of quantization; this entry point adds the section that needs the
quant package: the quality of each quantized variant beside its speed in the sweep (from
runs/week2/quant-quality, when `python -m week2_serving.quant.quality` has run).
"""

from __future__ import annotations

from pathlib import Path

from week2_serving.harness import report
from week2_serving.quant import report_section


def quant_quality(sweep: Path, cells: list[dict], baseline: str | None) -> str | None:
    """Quality beside speed for the quantized variants (None when quality was not measured)."""
    return report_section(sweep.parent, cells, baseline)


SECTIONS: dict[str, report.Section] = {"Quantization: quality beside speed": quant_quality}


def build(sweep: Path, usd_per_hour: float = 2.0, bandwidth_gbs: float | None = None) -> Path:
    """The harness's report of `sweep`, with week 2's SECTIONS."""
    return report.build(sweep, usd_per_hour, bandwidth_gbs, extra_sections=SECTIONS)


def main(argv: list[str] | None = None) -> Path:
    cfg = report.parse_args(argv, description=__doc__)
    return build(cfg.sweep_dir, cfg.gpu_hour_usd, cfg.mem_bandwidth_gbs)


if __name__ == "__main__":
    main()
