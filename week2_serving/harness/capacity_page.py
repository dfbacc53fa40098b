"""A capacity study's page: the search plotted, and its numbers in one short markdown file."""

from __future__ import annotations

from pathlib import Path

from common.plots import plt, save
from common.report import md_table
from common.results import atomic_write_bytes, read_json


def _fmt(x, spec: str = "{:.3g}") -> str:
    return spec.format(x) if isinstance(x, (int, float)) else "n/a"


def plot_search(results: dict, path: Path) -> Path:
    """Left: each probe's SLO ratio (worst term's value at its share / its bound; the search
    fits these) against the probed rate, ratio 1 dashed. Then p99 TTFT and p99 TPOT. Every
    search's probes numbered in the order measured (o met the SLO, x missed); the capacity
    (solid) and the fitted boundary (dotted) marked."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    bounds = {t.split("_")[0]: float(t.split(":")[1]) for t in results["slo"]}
    for ax, metric in zip(axes, ("ratio", "ttft", "tpot")):
        key = "slo_ratio" if metric == "ratio" else f"p99_{metric}_ms"
        for n, search in enumerate(results["searches"]):
            for k, p in enumerate(search["probes"]):
                y = p["summary"].get(key)
                if y is None or y != y or y == float("inf"):
                    continue
                ax.scatter(p["rate"], y, marker="o" if p["meets"] else "x", color=f"C{n}")
                ax.annotate(str(k + 1), (p["rate"], y), fontsize=7, color=f"C{n}")
            if search.get("boundary"):
                ax.axvline(search["boundary"], color=f"C{n}", ls=":", alpha=0.6)
        bound = 1.0 if metric == "ratio" else bounds.get(metric)
        if bound is not None:
            ax.axhline(bound, ls="--", color="gray", label=f"SLO bound {bound:g}")
        if results.get("capacity"):
            ax.axvline(results["capacity"], color="green", alpha=0.5, label="capacity")
        ax.set_xlabel("request rate (req/s, open loop)")
        ax.set_ylabel("SLO ratio (<= 1 meets)" if metric == "ratio" else f"p99 {metric.upper()} ms")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(
        "capacity search (o met the SLO, x missed; numbers: probe order; dotted: boundary)"
    )
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
                    _fmt(s.get("slo_ratio")),
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
    head = ["probe", "rate", "SLO", "SLO ratio", "req/s done", "goodput", "p99 TTFT ms"]
    head += ["p99 TPOT ms"]
    head += ["TPOT mean, per request", "TPOT mean, per token"]
    text = [
        f"# Capacity: `{results['config']['name']}`\n",
        f"SLO: {' '.join(results['slo'])}. Method: {results['method']}.\n",
        f"**Capacity: {_fmt(results.get('capacity'))} req/s** over searches "
        f"{[round(c, 3) for c in results.get('capacities', [])]} "
        f"(spread {_fmt(results.get('spread_of_median'), '{:.0%}')} of the median; fitted "
        f"boundaries {[_fmt(b) for b in results.get('boundaries') or []]}, capacity = boundary "
        f"less {_fmt(results['config'].get('headroom', 0), '{:.0%}')}); "
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


# ---- the sweep report's section: every capacity study beside the sweep ----


def load_studies(week_dir: Path) -> list[dict]:
    """The capacity studies under runs/week2 (capacity-*/results.json), by name."""
    out = []
    for path in sorted(Path(week_dir).glob("capacity-*/results.json")):
        res = read_json(path)
        res["folder"] = path.parent.name
        out.append(res)
    return out


def lever_of(res: dict) -> str:
    """What the study's server was: engine, model folder name, server flags."""
    cfg = res["config"]
    model = Path(cfg.get("model") or "runs/week1/hf-model").name
    where = cfg.get("base_url") or f"{cfg['engine']} · {model}"
    return " ".join([where, *cfg.get("server_args", [])])


def frontier_plot(studies: list[dict], path: Path) -> Path:
    """Goodput against offered rate, every probe of every study: the SLO frontier is where
    goodput stops following the offered rate."""
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for i, res in enumerate(studies):
        pts = sorted(
            (p["rate"], p["summary"].get("goodput") or 0.0)
            for s in res["searches"]
            for p in s["probes"]
        )
        if pts:
            ax.plot(*zip(*pts), "-o", color=f"C{i}", label=res["config"]["name"], ms=3)
        if res.get("capacity"):
            ax.axvline(res["capacity"], color=f"C{i}", ls=":", alpha=0.7)
    lim = max((p["rate"] for r in studies for s in r["searches"] for p in s["probes"]), default=1)
    ax.plot([0, lim], [0, lim], color="gray", lw=0.8, label="goodput = offered")
    ax.set_xlabel("offered rate (req/s)")
    ax.set_ylabel("goodput (req/s meeting the SLO)")
    ax.set_title("SLO frontier (dotted: capacity found)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def capacity_section(sweep: Path, cells: list[dict], baseline: str | None) -> str | None:
    """The report's capacity part (a report.Section): one row per study under the sweep's
    parent folder, with the capacity's spread, the check at it and above, and the cost."""
    studies = load_studies(Path(sweep).parent)
    if not studies:
        return None
    rows = []
    for r in studies:
        check = r.get("verification") or {}
        caps = r.get("capacities") or []
        rows.append(
            [
                f"[{r['config']['name']}](../{r['folder']}/report.md)",
                lever_of(r),
                " ".join(r["slo"]),
                f"{_fmt(r.get('capacity'))} [{_fmt(min(caps, default=None))}–"
                f"{_fmt(max(caps, default=None))}] ({len(caps)})",
                "meets" if check.get("at", {}).get("meets") else "misses" if check else "n/a",
                "meets" if check.get("above", {}).get("meets") else "misses" if check else "n/a",
                _fmt(r.get("usd_per_1m_output_tokens"), "${:.2f}"),
            ]
        )
    head = ["study", "server", "SLO", "capacity req/s [min–max] (searches)", "check at it"]
    head += ["check at 1.25x", "$ / 1M output tok"]
    img = frontier_plot(studies, Path(sweep) / "slo_frontier.png")
    return "\n".join([md_table(head, rows), "", f"![SLO frontier]({img.name})"])
