"""The quantization table of the week 2 report: quality (runs/week2/quant-quality) beside the
speed each variant reached in the sweep. Reads results files only; starts no server."""

from __future__ import annotations

from pathlib import Path

from common.results import read_json
from week2_serving.quant.variants import REFERENCE, VARIANTS

HEADERS = [
    "variant",
    "served as",
    "weights MB",
    "quantize s",
    "val perplexity (vs unquantized, same dtype)",
    "greedy agreement",
    "identical prefix",
    "top-1 agreement (teacher-forced)",
    "greedy self-agreement",
]


def speed_by_variant(cells: list[dict], baseline: str | None) -> dict[str, dict[str, float]]:
    """Output tok/s per load for each variant's sweep server: a server named like the variant,
    and for fp32 the sweep's baseline server (the first one, serving the unquantized model)."""
    out: dict[str, dict[str, float]] = {}
    # loads in a readable order: random workloads by concurrency, then the others
    cells = sorted(
        cells,
        key=lambda c: (
            c.get("config", {}).get("dataset_name", "random") != "random",
            c.get("max_concurrency") or 0,
            c["load_name"],
        ),
    )
    for c in cells:
        name = REFERENCE if c.get("server_name") == baseline else c.get("server_name")
        out.setdefault(name, {})[c["load_name"]] = c["output_throughput"]
    return out


def _quality_cells(name: str, v: dict, results: dict) -> list[str]:
    """Perplexity (relative to what the variant was compared with) and the agreements."""
    variants = results["variants"]
    g = v.get("greedy", {})
    base = v.get("compared_with", results.get("reference", REFERENCE))
    ref = variants.get(base, {})
    d_ppl = (
        f"{100 * (v['perplexity'] / ref['perplexity'] - 1):+.2f}% vs {base}"
        if ref.get("perplexity") and base != name
        else "reference"
    )
    return [
        f"{v['perplexity']:.2f} ({d_ppl})",
        f"{g['token_agreement']:.3f}" if g else "n/a",
        f"{g['mean_prefix_match']:.3f}" if g else "n/a",
        f"{v['top1_agreement']:.3f}" if "top1_agreement" in v else "n/a",
        f"{v['greedy_self_agreement']:.3f}" if "greedy_self_agreement" in v else "n/a",
    ]


def quality_table(results: dict, speed: dict[str, dict[str, float]] | None = None) -> str:
    """Markdown: one row per variant — size, perplexity, agreement, and sweep speed."""
    from common.report import md_table

    speed = speed or {}
    loads = list(dict.fromkeys(load for v in speed.values() for load in v))
    rows = []
    for name, v in results["variants"].items():
        mb = f"{v['weight_bytes'] / 1e6:.1f}" if v.get("weight_bytes") else "?"
        secs = f"{v['quantize_seconds']:.0f}" if v.get("quantize_seconds") else "—"
        head = [name, v.get("dtype", "?"), mb, secs]
        if v.get("status") != "ok":
            err = v.get("error", "unknown error").splitlines()[0][:100]
            rows.append([*head, f"failed: {err}", "", "", "", "", ""])
            continue
        tok_s = " / ".join(f"{speed[name][lo]:.0f}" for lo in loads if lo in speed.get(name, {}))
        rows.append([*head, *_quality_cells(name, v, results), tok_s or "—"])
    return md_table([*HEADERS, f"output tok/s ({' / '.join(loads) or 'sweep'})"], rows)


def variant_legend(names: list[str]) -> str:
    """One line per variant of the table, from its label in the registry (variants.py)."""
    return "\n".join(f"- `{n}`: {VARIANTS[n].label}" for n in names if n in VARIANTS)


def report_section(week_dir: Path, cells: list[dict], server_name: str | None) -> str | None:
    """The quality-beside-speed table for a week 2 sweep report, or None when quality was not
    measured. `cells` are the sweep's cell results; `server_name` is the sweep's baseline
    server (the unquantized model), whose speed is the fp32 row's."""
    path = Path(week_dir) / "quant-quality" / "results.json"
    if not path.is_file():
        return None
    res = read_json(path)
    cfg = res.get("config", {})
    text = [
        quality_table(res, speed_by_variant(cells, server_name)),
        "",
        variant_legend(list(res["variants"])),
        "",
        f"Perplexity: {res['eval']['windows']} windows of {cfg.get('eval_len')} tokens of the "
        f"week 1 val split. Each quantized variant is compared with the unquantized weights "
        "served at its own dtype ('served as': fp32, or the bf16 control). Greedy agreement: "
        f"{cfg.get('num_prompts')} prompts × {cfg.get('max_tokens')} greedy tokens, fraction "
        "equal to that reference position by position; identical prefix: mean fraction before "
        "the first difference. Top-1 agreement: same most-likely next token on the perplexity "
        "windows (no compounding). Greedy self-agreement: the greedy request twice on the same "
        "server (noise floor). Quality servers run with --enforce-eager; the speed columns come "
        "from this sweep. The dtypes are the ones vLLM's CPU build needs on this CPU "
        "(common/cpu.py).",
    ]
    return "\n".join(text)
