"""Quantization: INT8 W8A8 and INT4 AWQ variants of the week 1 model, and their quality.

Entry points: `python -m week2_serving.quant.quantize` (make the variants, each in its venv) and
`python -m week2_serving.quant.quality` (serve each on vLLM, measure perplexity and agreement).
The variants are one table, `VARIANTS` (variants.py): add a variant there.

What other packages use:
- `report_section(week_dir, cells, server_name)`: the quality-beside-speed table of the week 2
  report (None when quality was not measured); reads results files, starts no server.
- `VARIANTS`, `Variant`, `serve_dtype`, `serve_args`, `compared_with`: the registry.

The names are imported on first use: the workers (awq_worker, w8a8_worker) run in other venvs
and import this package, so it must not import anything they lack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from week2_serving.quant.tables import report_section
    from week2_serving.quant.variants import (
        VARIANTS,
        Variant,
        compared_with,
        serve_args,
        serve_dtype,
    )

_HOME = {
    "report_section": "week2_serving.quant.tables",
    "VARIANTS": "week2_serving.quant.variants",
    "Variant": "week2_serving.quant.variants",
    "serve_dtype": "week2_serving.quant.variants",
    "serve_args": "week2_serving.quant.variants",
    "compared_with": "week2_serving.quant.variants",
}
__all__ = ["VARIANTS", "Variant", "compared_with", "report_section", "serve_args", "serve_dtype"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)
