"""Week 2's generated README tables (see common/docs.py): the numbers they show, and how.

Each table is one results file of `make week2` / `make week2-engine`; a sweep's table reads its
cells (`<sweep>/<server>/<load>/results.json`) through `collect`. Where a result has repeats
(the validation's rounds) a cell reads median [min–max].
"""

from __future__ import annotations

import statistics
from pathlib import Path

from common.docs import Table, register
from common.report import md_table
from common.results import read_json

CELL_KEYS = ("output_throughput", "mean_ttft_ms", "mean_tpot_ms", "completed", "failed")


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """median [min–max] of `values`, each written with `fmt`."""
    lo, mid, hi = min(values), statistics.median(values), max(values)
    if len(values) == 1:
        return fmt.format(mid)
    return f"{fmt.format(mid)} [{fmt.format(lo)}–{fmt.format(hi)}]"


def collect_sweep(path: Path) -> dict:
    """A sweep's `sweep.json` and every finished cell beside it, as one results dict."""
    sweep = read_json(path)
    cells, env = {}, {}
    for server in sweep["config"]["servers"]:
        for load in sweep["config"]["loads"]:
            cell = path.parent / server["name"] / load["name"] / "results.json"
            if cell.is_file():
                r = read_json(cell)
                cells[f"{server['name']}/{load['name']}"] = {k: r[k] for k in CELL_KEYS}
                env = env or r.get("environment", {})
    servers = [s["name"] for s in sweep["config"]["servers"]]
    loads = [ld["name"] for ld in sweep["config"]["loads"]]
    return {"cells": cells, "servers": servers, "loads": loads, "environment": env}


def sweep_numbers(r: dict) -> dict:
    return {k: r[k] for k in ("cells", "servers", "loads")}


def sweep_table(n: dict) -> str:
    """Output tok/s / mean TTFT ms / mean TPOT ms per server setting × load; — = not run."""
    rows = []
    for s in n["servers"]:
        row = [f"`{s}`"]
        for ld in n["loads"]:
            c = n["cells"].get(f"{s}/{ld}")
            row.append(
                "—"
                if c is None
                else f"{c['output_throughput']:,.0f} / {c['mean_ttft_ms']:.0f} / "
                f"{c['mean_tpot_ms']:.1f}" + (f" ({c['failed']} failed)" if c["failed"] else "")
            )
        rows.append(row)
    runs = {len(c.get("runs_output_throughput") or [0]) for c in n["cells"].values()}
    how = "one run" if runs == {1} else "the median of its runs (3 where a load repeats)"
    note = f"Each cell: output tok/s / mean TTFT ms / mean TPOT ms, {how}; — = not in the sweep."
    return md_table(["server", *n["loads"]], rows) + "\n\n" + note


def quality_numbers(r: dict) -> dict:
    out = {}
    for name, v in r["variants"].items():
        if v.get("status") != "ok":
            continue
        out[name] = {
            "dtype": v["dtype"],
            "compared_with": v["compared_with"],
            "weight_mb": v["weight_bytes"] / 1e6,
            "quantize_s": v.get("quantize_seconds"),
            "perplexity": v["perplexity"],
            "greedy": v["greedy"]["token_agreement"],
            "prefix": v["greedy"]["mean_prefix_match"],
            "top1": v["top1_agreement"],
        }
    return {"variants": out, "reference": r["reference"]}


def quality_table(n: dict) -> str:
    vs = n["variants"]
    rows = []
    for name, v in vs.items():
        delta = 100 * (v["perplexity"] / vs[v["compared_with"]]["perplexity"] - 1)
        vs_ref = "reference" if name == n["reference"] else f"{delta:+.2f}% vs {v['compared_with']}"
        rows.append([
            f"`{name}`", v["dtype"], f"{v['weight_mb']:.1f}",
            "—" if v["quantize_s"] is None else f"{v['quantize_s']:.0f}",
            f"{v['perplexity']:.2f} ({vs_ref})",
            f"{v['greedy']:.3f}", f"{v['prefix']:.3f}", f"{v['top1']:.3f}",
        ])  # fmt: skip
    headers = ["variant", "served as", "weights MB", "quantize s", "val perplexity"]
    return md_table(headers + ["greedy agreement", "identical prefix", "top-1 agreement"], rows)


def validate_numbers(r: dict) -> dict:
    metrics = list(r["summary"])
    rounds = {m: {t: [row[t][m] for row in r["rounds"]] for t in ("vllm", "ours")} for m in metrics}
    out = {"summary": r["summary"], "rounds": rounds, "config": r["config"]}
    for k in ("saturated_request_rate", "request_rate"):  # runs before the paced rounds lack them
        if k in r:
            out[k] = r[k]
    return out


def validate_table(n: dict) -> str:
    names = {"mean_ttft_ms": "mean TTFT (ms)", "mean_tpot_ms": "mean TPOT (ms)",
             "output_throughput": "output throughput (tok/s)"}  # fmt: skip
    rows = []
    for m, s in n["summary"].items():
        r = n["rounds"][m]
        diffs = [100 * (o / v - 1) for v, o in zip(r["vllm"], r["ours"], strict=True)]
        rows.append([
            names.get(m, m), spread(r["vllm"]), spread(r["ours"]),
            f"**{100 * s['relative_diff']:+.1f}%**", spread(diffs, "{:+.1f}%"),
            "yes" if s["within_tolerance"] else "**NO**",
        ])  # fmt: skip
    c = n["config"]
    headers = ["metric", "`vllm bench serve`", "ours", "difference of medians"]
    note = (
        f"{c['rounds']} rounds, {c['num_prompts']} prompts of {c['input_len']} in / "
        f"{c['output_len']} out tokens (±{100 * c['range_ratio']:.0f}%), concurrency "
        f"{c['max_concurrency']}{arrivals(n)}; median [min–max] over rounds; tolerance "
        f"±{100 * c['tolerance']:.0f}%."
    )
    return md_table(headers + ["per-round difference", "within tolerance"], rows) + "\n\n" + note


def arrivals(n: dict) -> str:
    """How the rounds' requests arrived, for the validation table's note."""
    rate, sat = n.get("request_rate"), n.get("saturated_request_rate")
    if rate is None or sat is None or rate == float("inf"):
        return ", every request sent at once"
    return (
        f", arrivals evenly spaced at {rate:.2f} requests/s ({rate / sat:.2g}× the saturated "
        f"{sat:.2f}/s measured first)"
    )


GUIDELLM_NAMES = {
    "request_throughput": "requests/s",
    "output_throughput": "output tok/s",
    "mean_ttft_ms": "mean TTFT (ms)",
    "mean_tpot_token_weighted_ms": "mean TPOT, token-weighted (ms)",
}


def guidellm_numbers(r: dict) -> dict:
    g = r.get("guidellm") or {"skipped": "not run"}
    if "rows" not in g:
        return {"skipped": g.get("skipped", "not run")}
    rows = []
    for row in g["rows"]:
        metrics = {k: row[k] for k in GUIDELLM_NAMES if k in row}
        rows.append({"rate": row["rate"], "metrics": metrics, "rounds": row.get("rounds", 1)})
    shares = r["config"].get("guidellm_rate_shares")
    out = {"rows": rows, "tolerance": g["tolerance"], "shares": shares}
    out["together"] = bool(g.get("together"))  # both tools at once (else one after the other)
    if "client_cpu_s_per_request" in g:  # results from before it was recorded lack it
        out["client_cpu_ms_per_request"] = {
            k: 1000 * v for k, v in g["client_cpu_s_per_request"].items()
        }
    return out


def guidellm_table(n: dict) -> str:
    if "rows" not in n:
        return f"guidellm not run: {n['skipped']}"
    rows = []
    for row in n["rows"]:
        for k, m in row["metrics"].items():
            rows.append([
                f"{row['rate']:.2f}", GUIDELLM_NAMES[k], f"{m['guidellm']:.2f}", f"{m['ours']:.2f}",
                f"**{100 * m['relative_diff']:+.1f}%**", "yes" if m["within"] else "**NO**",
            ])  # fmt: skip
    shares = " and ".join(f"{100 * s:.1f}".rstrip("0").rstrip(".") + "%" for s in n["shares"] or [])
    k = n["rows"][0]["rounds"]
    how = f"medians over {k} rounds" if k > 1 else "one run each"
    if n.get("together"):
        how += (
            ", both tools sending at the same time (each at the rate: the server serves twice it)"
        )
    elif k > 1:
        how += " (the tools take turns going first)"
    note = (
        f"Constant rates at {shares} of the saturated rate; {how}; tolerance "
        f"±{100 * n['tolerance']:.0f}%."
    )
    if cpu := n.get("client_cpu_ms_per_request"):
        note += (
            f" Client CPU per request (median over rounds): guidellm {cpu['guidellm']:.1f} ms,"
            f" ours {cpu['ours']:.1f} ms."
        )
    headers = ["rate (req/s)", "metric", "guidellm", "ours", "difference", "within tolerance"]
    return md_table(headers, rows) + "\n\n" + note


ENGINE_SERVERS = (
    "vllm",
    "continuous",
    "static-padded",
    "static",
    "sequential",
    "no-prefix-caching",
)
ENGINE_LOADS = ("c1", "c8", "c32", "mixed-c32", "shared-prefix-c8")


def in_order(preferred: tuple[str, ...], names: list[str]) -> list[str]:
    """`names` without repeats, those in `preferred` first and in its order."""
    rank = {name: i for i, name in enumerate(preferred)}
    return sorted(dict.fromkeys(names), key=lambda x: rank.get(x, len(rank)))


def engine_numbers(r: dict) -> dict:
    keep = ("continuous_vs_sequential_c32", "continuous_vs_static_mixed_c32",
            "continuous_vs_static_c32", "ours_vs_vllm", "failed_requests",
            "continuous_vs_static_mixed_c32_runs", "continuous_vs_static_padded_mixed_c32_runs",
            "targets")  # fmt: skip
    summary = {k: r["summary"][k] for k in keep if k in r["summary"]}
    return {"summary": summary, "cells": r["cells"]}


def engine_table(n: dict) -> str:
    s = n["summary"]
    runs = s.get("continuous_vs_static_mixed_c32_runs") or [s["continuous_vs_static_mixed_c32"]]
    padded = s.get("continuous_vs_static_padded_mixed_c32_runs") or []
    each = lambda rs: ", ".join(f"{r:.2f}x" for r in rs)  # noqa: E731
    rows = [
        ["continuous / sequential, c32", f"**{s['continuous_vs_sequential_c32']:.2f}x**", "≥ 3x"],
        *([["continuous / static-padded (as `generate()`), long-tailed lengths, mixed-c32, "
            "each run", f"**{each(padded)}**", "≥ 1.5x in every run"]] if padded else []),
        ["continuous / static with finished rows dropped, long-tailed lengths, mixed-c32, "
         "each run", each(runs), "" if padded else "≥ 1.5x in every run"],
        ["continuous / static, equal lengths, c32", f"{s['continuous_vs_static_c32']:.2f}x", ""],
        *[[f"ours / vLLM CPU, {k}", f"{v:.2f}x", "≥ 1.0x" if k in ("c1", "c8", "c32") else ""]
          for k, v in s["ours_vs_vllm"].items() if v is not None],
        ["failed requests, all cells", s["failed_requests"], "0"],
    ]  # fmt: skip
    cells = n["cells"]
    servers = in_order(ENGINE_SERVERS, [k.split("/")[0] for k in cells])
    loads = in_order(ENGINE_LOADS, [k.split("/")[1] for k in cells])
    by_cell = {"cells": cells, "servers": servers, "loads": loads}
    return (
        md_table(["ratio of output tok/s (medians of repeated runs)", "measured", "target"], rows)
        + "\n\n"
        + sweep_table(by_cell)
    )


def memory_numbers(r: dict) -> dict:
    keys = ("steps", "bytes_per_token", "peak_tokens", "utilization_paged",
            "utilization_naive_max_len", "utilization_naive_budget")  # fmt: skip
    return {k: r["memory"][k] for k in keys}


def memory_table(n: dict) -> str:
    p = n["peak_tokens"]
    rows = [
        ["paged (blocks on demand)", f"{100 * n['utilization_paged']:.0f}%", p["paged_reserved"]],
        ["reserve `max_tokens` per request", f"{100 * n['utilization_naive_budget']:.0f}%",
         p["naive_budget"]],
        ["reserve `max_model_len` per request", f"{100 * n['utilization_naive_max_len']:.0f}%",
         p["naive_max_len"]],
    ]  # fmt: skip
    note = (
        f"Mean over {n['steps']} steps of the tokens in the cache over the token slots held; "
        f"{n['bytes_per_token']:,} bytes per token slot."
    )
    headers = ["KV allocation", "slots filled (mean)", "peak slots held"]
    return md_table(headers, rows) + "\n\n" + note


def prefix_numbers(r: dict) -> dict:
    names = ("vllm/shared-prefix-c8", "continuous/shared-prefix-c8",
             "no-prefix-caching/shared-prefix-c8")  # fmt: skip
    return {k: r["cells"][k] for k in names if k in r["cells"]}


def prefix_table(n: dict) -> str:
    label = {"vllm": "vLLM CPU (prefix caching on)", "continuous": "ours, prefix caching on",
             "no-prefix-caching": "ours, prefix caching off"}  # fmt: skip
    rows = [
        [label[k.split("/")[0]], f"{c['mean_ttft_ms']:.0f}", f"{c['output_throughput']:,.0f}"]
        for k, c in n.items()
    ]
    return md_table(["server (shared-prefix load, c8)", "mean TTFT ms", "output tok/s"], rows)


register(Table("week2-sweep", "week2", "week2/sweep-cpu/sweep.json", sweep_numbers, sweep_table,
               collect_sweep))  # fmt: skip
register(Table("week2-quality", "week2", "week2/quant-quality/results.json", quality_numbers,
               quality_table))  # fmt: skip
register(Table("week2-validate", "week2", "week2/validate/results.json", validate_numbers,
               validate_table))  # fmt: skip
register(Table("week2-guidellm", "week2", "week2/validate/results.json", guidellm_numbers,
               guidellm_table))  # fmt: skip
register(Table("week2-engine", "week2", "week2/engine/results.json", engine_numbers,
               engine_table))  # fmt: skip
register(Table("week2-kv-memory", "week2", "week2/engine/results.json", memory_numbers,
               memory_table))  # fmt: skip
register(Table("week2-prefix-cache", "week2", "week2/engine/results.json", prefix_numbers,
               prefix_table))  # fmt: skip
from week2_serving import tables_engine  # noqa: E402, F401  (registers the engine's extension tables)
