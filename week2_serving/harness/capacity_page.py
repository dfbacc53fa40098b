"""A capacity study's page: the search plotted, and its numbers in one short markdown file."""

from __future__ import annotations

from pathlib import Path

from common.plots import plt, save
from common.report import md_table
from common.results import atomic_write_bytes


def _fmt(x, spec: str = "{:.3g}") -> str:
    return spec.format(x) if isinstance(x, (int, float)) else "n/a"


def plot_search(results: dict, path: Path) -> Path:
    """p99 TTFT and p99 TPOT against the probed rate, every search's probes numbered in the
    order measured (o met the SLO, x missed), the SLO bounds dashed, the capacity marked."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    bounds = {t.split("_")[0]: float(t.split(":")[1]) for t in results["slo"]}
    for ax, metric in zip(axes, ("ttft", "tpot")):
        for n, search in enumerate(results["searches"]):
            for k, p in enumerate(search["probes"]):
                y = p["summary"].get(f"p99_{metric}_ms")
                ax.scatter(p["rate"], y, marker="o" if p["meets"] else "x", color=f"C{n}")
                ax.annotate(str(k + 1), (p["rate"], y), fontsize=7, color=f"C{n}")
        if metric in bounds:
            ax.axhline(bounds[metric], ls="--", color="gray", label=f"SLO {bounds[metric]:g} ms")
        if results.get("capacity"):
            ax.axvline(results["capacity"], color="green", alpha=0.5, label="capacity")
        ax.set_xlabel("request rate (req/s, open loop)")
        ax.set_ylabel(f"p99 {metric.upper()} (ms)")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("capacity search (o met the SLO, x missed; numbers: probe order)")
    return save(fig, path)


def search_rows(results: dict) -> list[list]:
    rows = []
    for n, search in enumerate(results["searches"], 1):
        for k, p in enumerate(search["probes"], 1):
            s = p["summary"]
            rows.append(
                [
                    f"{n}.{k}",
                    f"{p['rate']:.3g}",
                    "met" if p["meets"] else "missed",
                    _fmt(s.get("request_throughput")),
                    _fmt(s.get("goodput")),
                    _fmt(s.get("p99_ttft_ms"), "{:.0f}"),
                    _fmt(s.get("p99_tpot_ms"), "{:.1f}"),
                    _fmt(s.get("mean_tpot_ms"), "{:.1f}"),
                    _fmt(s.get("mean_tpot_token_weighted_ms"), "{:.1f}"),
                ]
            )
    return rows


def verify_lines(check: dict | None) -> list[str]:
    if not check:
        return ["(no verification run)"]
    lines = []
    for key, label in (("at", "at the capacity"), ("above", f"at {check['factor']:g}x")):
        p = check[key]
        runs = p["summary"].get("runs_meet")
        lines.append(
            f"- {label} ({p['rate']:.3g} req/s): {'meets' if p['meets'] else 'misses'} the SLO "
            f"over its pooled runs; per run: {runs}; shares {p['summary']['shares']}"
        )
    return lines


def write_page(results: dict, path: Path) -> Path:
    head = ["probe", "rate", "SLO", "req/s done", "goodput", "p99 TTFT ms", "p99 TPOT ms"]
    head += ["TPOT mean, per request", "TPOT mean, per token"]
    text = [
        f"# Capacity: `{results['config']['name']}`\n",
        f"SLO: {' '.join(results['slo'])}. Method: {results['method']}.\n",
        f"**Capacity: {_fmt(results.get('capacity'))} req/s** over searches "
        f"{[round(c, 3) for c in results.get('capacities', [])]} "
        f"(spread {_fmt(results.get('spread_of_median'), '{:.0%}')} of the median); "
        f"$ per 1M output tokens there: {_fmt(results.get('usd_per_1m_output_tokens'), '${:.2f}')} "
        f"(${results['config']['usd_per_hour']:g}/h).\n",
        *verify_lines(results.get("verification")),
        "",
        md_table(head, search_rows(results)),
        "\nTPOT per request is the mean of each request's own TPOT (what the SLO judges); per "
        "token it is total decode time / total decode tokens, where long requests weigh more.\n",
        "![search](capacity.png)",
    ]
    atomic_write_bytes(path, "\n".join(text).encode())
    return path
