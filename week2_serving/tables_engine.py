"""Generated README tables of the engine's extensions (see common/docs.py and tables.py):
speculative decoding (`engine.spec_bench`), the 8-bit KV cache (`engine.kv_bench`), multi-LoRA
(`engine.lora_bench`), structured output (`engine.structured_bench`), the bf16 comparison
with vLLM (`engine.bench --config .../engine-cpu-bf16.yaml`), the speed levers (`engine.levers`)
and the step breakdown (`engine.profile`)."""

from __future__ import annotations

from common.docs import Table, register
from common.report import md_table


def spread3(row: dict, key: str = "tok_s") -> str:
    return f"{row[key]:.0f} [{row[key + '_min']:.0f}–{row[key + '_max']:.0f}]"


def spec_numbers(r: dict) -> dict:
    keep = ("method", "workload", "concurrency", "tok_s", "tok_s_min", "tok_s_max", "speedup")
    rows = []
    for row in r["rows"]:
        out = {k: row[k] for k in keep}
        s = row.get("spec") or {}
        out["acceptance_length"] = s.get("mean_acceptance_length")
        out["theory"] = row.get("theory_acceptance_length")
        rows.append(out)
    return {"k": r["config"]["num_speculative_tokens"], "rows": rows}


def spec_table(n: dict) -> str:
    def length(row: dict) -> str:
        if row["acceptance_length"] is None:
            return "–"
        return f"{row['acceptance_length']:.2f} ({row['theory']:.2f})"

    rows = [
        [
            r["workload"],
            r["method"],
            r["concurrency"],
            spread3(r),
            f"{r['speedup']:.2f}x",
            length(r),
        ]
        for r in n["rows"]
    ]
    head = ["workload", "proposer", "concurrency", "output tok/s, median [min–max]",
            "speed-up over off", f"mean acceptance length (theory), k = {n['k']}"]  # fmt: skip
    return md_table(head, rows)


def kv_numbers(r: dict) -> dict:
    return {"config": r["config"], "capacity": r["capacity"], "throughput": r["throughput"],
            "quality": r["quality"]}  # fmt: skip


def kv_table(n: dict) -> str:
    cap, q, tp = n["capacity"], n["quality"], n["throughput"]
    c = n["config"]
    rows = []
    for name in cap:
        t = tp.get(name)
        speed = f"{t['median_tok_s']:.0f} [{t['min_tok_s']:.0f}–{t['max_tok_s']:.0f}]" if t else "–"
        rows.append([
            name, cap[name]["bytes_per_block"], cap[name]["max_sequences"],
            "yes" if cap[name]["fits_at_max"] and cap[name]["preempts_at_max_plus_1"] else "no",
            speed, f"{q[name]['perplexity']:.2f}", f"{q[name]['greedy_agreement']:.3f}",
        ])  # fmt: skip
    head = ["KV cache", "bytes per block", f"sequences held ({c['kv_memory_mib']:g} MiB, "
            f"{c['context_len']} tokens each)", "engine confirms (fits / preempts at +1)",
            f"output tok/s at {tp['sequences']} sequences", "perplexity",
            "greedy agreement vs fp32"]  # fmt: skip
    return md_table(head, rows)


def structured_numbers(r: dict) -> dict:
    served = {k: {f: a[f] for f in ("valid", "invalid", "failed")} for k, a in r["served"].items()}
    o = r["offline"]
    keep = ("with_grammar", "without", "mask_us_per_token")
    cost = {k: {f: o[k][f] for f in ("median", "min", "max")} for k in keep}
    return {"n": r["config"]["num_requests"], "served": served, "cost": cost,
            "ratio": o["tokens_per_s_ratio"]}  # fmt: skip


def structured_table(n: dict) -> str:
    def mmm(d: dict, fmt: str) -> str:
        return f"{fmt.format(d['median'])} [{fmt.format(d['min'])}–{fmt.format(d['max'])}]"

    rows = [[kind, f"{a['valid']} / {n['n']}", a["invalid"], a["failed"]]
            for kind, a in n["served"].items()]  # fmt: skip
    c = n["cost"]
    cost = [
        ["output tok/s with the grammar", mmm(c["with_grammar"], "{:.0f}")],
        ["output tok/s without (same tokens)", mmm(c["without"], "{:.0f}")],
        ["ratio with / without", f"{n['ratio']:.2f}x"],
        ["mask per token (fill the bitmask + apply it), µs", mmm(c["mask_us_per_token"], "{:.0f}")],
    ]
    return (
        md_table(["constraint (served, over HTTP)", "valid", "invalid", "failed"], rows)
        + "\n\n"
        + md_table(["the mask's cost (offline, median [min–max])", "measured"], cost)
    )


def lora_numbers(r: dict) -> dict:
    keep = ("num_adapters", "rank", "num_requests", "concurrency", "max_tokens", "repeats")
    return {"config": {k: r["config"][k] for k in keep}, "ours": r["ours"],
            "merged": r["merged"].get("merged"), "vllm": r.get("vllm") or {}}  # fmt: skip


def lora_table(n: dict) -> str:
    def cell(d: dict | None, base: dict | None) -> str:
        if not d:
            return "–"
        lo, hi = d["tok_s_range"]
        ratio = f", {d['tok_s'] / base['tok_s']:.2f}x base" if base else ""
        return f"{d['tok_s']:.0f} [{lo:.0f}–{hi:.0f}]{ratio}"

    ours, vllm = n["ours"], n["vllm"]
    rows = [
        [mix, f"{ours[mix]['distinct_in_flight']:.1f}", cell(ours[mix], ours.get("base")),
         cell(vllm.get(mix), vllm.get("base"))]
        for mix in ("distinct", "uniform", "skewed", "identical")
        if mix in ours
    ]  # fmt: skip
    rows.append(
        ["base model only", "0", cell(ours.get("base"), None), cell(vllm.get("base"), None)]
    )
    rows.append(["one adapter merged into the weights", "0", cell(n["merged"], None), "–"])
    c = n["config"]
    head = [
        "requests' adapters (Punica's mixes)",
        "distinct adapters in flight (mean)",
        "ours: output tok/s, median [range]",
        "vLLM CPU: output tok/s, median [range]",
    ]
    note = (f"\n\n{c['num_adapters']} adapters of rank {c['rank']}, {c['num_requests']} "
            f"requests of {c['max_tokens']} tokens, {c['concurrency']} in flight, "
            f"{c['repeats']} repeats.")  # fmt: skip
    return md_table(head, rows) + note


def bf16_numbers(r: dict) -> dict:
    cells = r["cells"]
    return {
        "ours_vs_vllm": r["summary"]["ours_vs_vllm"],
        "tok_s": {k: round(c["output_throughput"], 1) for k, c in cells.items()},
        "failed": sum(c["failed"] for c in cells.values()),
        "runs": max(len(c.get("runs_output_throughput") or [0]) for c in cells.values()),
    }


def bf16_table(n: dict) -> str:
    """ours / vLLM in bfloat16 at each concurrency, with both engines' tok/s."""
    rows = []
    for load in ("c1", "c8", "c32"):
        ours, vllm = n["tok_s"].get(f"continuous/{load}"), n["tok_s"].get(f"vllm/{load}")
        ratio = n["ours_vs_vllm"].get(load)
        rows.append([
            load,
            "–" if ours is None else f"{ours:,.0f}",
            "–" if vllm is None else f"{vllm:,.0f}",
            "–" if ratio is None else f"**{ratio:.2f}x**",
            "≥ 1.0x",
        ])  # fmt: skip
    head = ["load", "ours bf16, output tok/s", "vLLM CPU bf16, output tok/s", "ours / vLLM",
            "target"]  # fmt: skip
    return md_table(head, rows) + (
        f"\n\nEach cell: the median of {n['runs']} run(s); failed requests: {n['failed']}."
    )


def levers_numbers(r: dict) -> dict:
    return {"levers": r["levers"], "kept": r.get("kept", {}), "repeats": r["config"]["repeats"],
            "output_len": r["config"]["output_len"],
            "output_spread": r["config"].get("output_spread", 0.0),
            "left_out": r.get("left_out", {})}  # fmt: skip


def levers_table(n: dict) -> str:
    """One row per lever: tok/s at each concurrency, its ratio to all off, kept or not."""
    loads = list(next(iter(n["levers"].values())))
    rows = []
    for row, cols in n["levers"].items():
        cells = [
            f"{c['tokens_per_s']:,.0f} [{c['range'][0]:,.0f}–{c['range'][1]:,.0f}] "
            f"({c['vs_all_off']:.2f}x)"
            for c in cols.values()
        ]
        rows.append([row, *cells, n["kept"].get(row, "")])
    head = ["lever", *(f"{c}: output tok/s [min–max] (vs all off)" for c in loads), "kept?"]
    spread = n.get("output_spread", 0.0)
    lengths = f"{n['output_len']} ± {spread:.0%}" if spread else f"{n['output_len']}"
    left = "".join(f" Left out: {row} ({why})." for row, why in n.get("left_out", {}).items())
    return md_table(head, rows) + (
        f"\n\nOffline, {lengths} greedy tokens per request (requests finish at different "
        f"steps and the next join a running batch); median of {n['repeats']} runs per cell, "
        f"the rows taking turns.{left}"
    )


def profile_numbers(r: dict) -> dict:
    keep = ("tokens_per_s", "us_per_token", "us_per_token_untimed")
    return {
        "before": {k: r["before"][k] for k in keep},
        "after": {k: r["after"][k] for k in keep},
        "speedup": r["speedup"],
        "bridge_us": r["async_bridge"]["overhead_us_per_token"],
        "num_requests": r["config"]["num_requests"],
        "output_len": r["config"]["output_len"],
    }


def profile_table(n: dict) -> str:
    """µs per output token of each phase of a step, levers off (before) and on (after)."""
    b, a = n["before"]["us_per_token"], n["after"]["us_per_token"]
    rows = [[phase, f"{b[phase]:.1f}", f"{a[phase]:.1f}"] for phase in b]
    rows.append(["(not timed)", f"{n['before']['us_per_token_untimed']:.1f}",
                 f"{n['after']['us_per_token_untimed']:.1f}"])  # fmt: skip
    rows.append(["**output tok/s**", f"**{n['before']['tokens_per_s']:,.0f}**",
                 f"**{n['after']['tokens_per_s']:,.0f}**"])  # fmt: skip
    head = ["phase", "before (levers off): µs per output token", "after (levers on)"]
    return md_table(head, rows) + (
        f"\n\n{n['num_requests']} requests at once, {n['output_len']} tokens each, offline; "
        f"after / before {n['speedup']:.2f}x. Through the in-process async bridge (engine "
        f"thread, asyncio queues, one coroutine per request) each token costs "
        f"{n['bridge_us']:.0f} µs more."
    )


register(Table("week2-levers", "week2", "week2/engine-levers/results.json", levers_numbers,
               levers_table))  # fmt: skip
register(Table("week2-step-breakdown", "week2", "week2/engine-profile/results.json",
               profile_numbers, profile_table))  # fmt: skip
register(
    Table("week2-engine-bf16", "week2", "week2/engine-bf16/results.json", bf16_numbers, bf16_table)
)
register(Table("week2-spec", "week2", "week2/spec/results.json", spec_numbers, spec_table))
register(Table("week2-kv-quant", "week2", "week2/kv-quant/results.json", kv_numbers, kv_table))
register(Table("week2-lora", "week2", "week2/lora/results.json", lora_numbers, lora_table))
register(
    Table("week2-structured", "week2", "week2/structured/results.json", structured_numbers,
          structured_table)
)  # fmt: skip
