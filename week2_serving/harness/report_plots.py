"""The sweep report's plots: throughput and latency against concurrency, and the Pareto front.

Each plot is drawn from the cells' results (the `random` workload's cells, by concurrency) and
saved beside report.md; `pareto` is the latency-throughput front the third plot draws.
"""

from __future__ import annotations

from pathlib import Path

from common.plots import plt, save


def _series(cells, server, metric):
    pts = sorted(
        (c["max_concurrency"], c[metric])
        for c in cells
        if c["server_name"] == server
        and c.get("max_concurrency")
        and c["config"]["dataset_name"] == "random"
    )
    return [p[0] for p in pts], [p[1] for p in pts]


def pareto(points: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """Points not dominated: lower latency (x) and higher throughput (y) are both better."""
    front = []
    for x, y, label in sorted(points):
        if not front or y > front[-1][1]:
            front.append((x, y, label))
    return front


def plots(cells: list[dict], servers: list[str], out: Path) -> list[str]:
    names = []
    fig, ax = plt.subplots(figsize=(6, 4))
    for s in servers:
        ax.plot(*_series(cells, s, "output_throughput"), marker="o", label=s)
    ax.set(
        xscale="log",
        xlabel="concurrency",
        ylabel="output tokens/s",
        title="Throughput vs concurrency",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    names.append(save(fig, out / "throughput_vs_concurrency.png").name)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, metric in zip(axes, ("ttft", "tpot")):
        for s in servers:
            xs, p50 = _series(cells, s, f"median_{metric}_ms")
            _, p99 = _series(cells, s, f"p99_{metric}_ms")
            line = ax.plot(xs, p50, marker="o", label=f"{s} p50")[0]
            ax.plot(xs, p99, marker="x", ls="--", color=line.get_color(), label=f"{s} p99")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="concurrency",
            ylabel="ms",
            title=f"{metric.upper()} vs load",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    names.append(save(fig, out / "latency_vs_load.png").name)

    fig, ax = plt.subplots(figsize=(6, 4))
    pts = []
    for s in servers:
        sc = [c for c in cells if c["server_name"] == s and c["config"]["dataset_name"] == "random"]
        xs, ys = [c["median_tpot_ms"] for c in sc], [c["output_throughput"] for c in sc]
        ax.scatter(xs, ys, label=s)
        pts += [(c["median_tpot_ms"], c["output_throughput"], f"{s}/{c['load_name']}") for c in sc]
    front = pareto(pts)
    ax.plot([p[0] for p in front], [p[1] for p in front], color="black", lw=1, label="Pareto front")
    ax.set(
        xlabel="median TPOT (ms) — lower is better",
        ylabel="output tokens/s",
        title="Latency–throughput",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    names.append(save(fig, out / "pareto.png").name)
    return names
