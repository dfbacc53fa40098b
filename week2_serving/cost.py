"""Cost per 1M output tokens beside measured throughput, at a stated price per hour.

The price comes from the inference arithmetic lab's accelerator table
(week2_serving/arith/data/accelerators.json, indicative on-demand prices): the row of the GPU a
run used when the table has it, the `cpu-2core` row for a CPU-only run. A run on a GPU the
table lacks gets no cost rather than a wrong one. The arithmetic is the lab's own
`cost_per_million_tokens`: $/hour / (tokens/s × 3600) × 1e6.
"""

from __future__ import annotations

from week2_serving.arith.hardware import Accelerator, accelerators
from week2_serving.arith.roofline import cost_per_million_tokens

CPU_ROW = "cpu-2core"


def priced_accelerator(environment: dict) -> Accelerator | None:
    """The accelerator row that prices a run on this environment (None: a GPU not in the table).

    A GPU matches the row whose key's model part (`h100` of `h100-sxm`) is in its name."""
    table = accelerators()
    gpu = (environment.get("gpu_name") or "").lower()
    if not gpu:
        return table[CPU_ROW]
    for key, acc in table.items():
        if key != CPU_ROW and key.split("-")[0] in gpu:
            return acc
    return None


def cost_text(cell: dict) -> str:
    """ "$0.28" for a cell's output throughput at its accelerator's price; "n/a" without either."""
    acc = priced_accelerator(cell.get("environment") or {})
    tput = cell.get("output_throughput") or 0
    if acc is None or not tput > 0:
        return "n/a"
    return f"${cost_per_million_tokens(acc.price_per_hour, tput):.2f}"


def cost_header(cells: list[dict]) -> str:
    """The column's header, stating the price(s) per hour it assumes."""
    rows = {priced_accelerator(c.get("environment") or {}) for c in cells} - {None}
    prices = ", ".join(sorted(f"${a.price_per_hour:g}/h ({a.key})" for a in rows))
    return f"$ per 1M output tok (at {prices or 'no known price'})"
