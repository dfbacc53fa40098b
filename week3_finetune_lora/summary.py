"""The week 3 summary: before/after table per task, QLoRA vs LoRA, DPO, served vs local.

    python -m week3_finetune_lora.summary        # reads runs/week3/*/results.json

Reads only results files (the runs of sft, dpo and serve), checks each acceptance number of
the week, and writes runs/week3/summary/{results.json, before_after.png}.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.cli import parse
from common.plots import plt, save
from common.results import get_logger, read_json, runs_root, write_results
from week3_finetune_lora.tasks import TASKS

log = get_logger("week3.summary")


def _load(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def collect(week: Path) -> dict:
    """Every week 3 number, from the results files present."""
    tasks = []
    for p in sorted(week.glob("sft-*/results.json")):
        r = read_json(p)
        tasks.append(
            {
                "task": r["task"],
                "base_exact": r["base"]["exact_match"] if r.get("base") else None,
                "adapter_exact": r["adapter"]["exact_match"],
                "train_seconds": r["train_seconds"],
                "steps": r["config"]["max_steps"],
                "trainable_params": r["trainable_params"],
                "total_params": r["total_params"],
                # share of the *base* (total counts the LoRA matrices too)
                "trainable_fraction": r["trainable_params"]
                / (r["total_params"] - r["trainable_params"]),
                "base_weight_bytes": r["base_weight_bytes"],
                "model": r["config"]["model"],
            }
        )
    qlora = []
    for p in sorted(week.glob("qlora-*/results.json")):
        r = read_json(p)
        lora = _load(week / f"sft-{r['task']}" / "results.json")
        qlora.append(
            {
                "task": r["task"],
                "exact": r["adapter"]["exact_match"],
                "lora_exact": lora["adapter"]["exact_match"] if lora else None,
                "base_weight_bytes_nf4": r["base_weight_bytes"],
                "base_weight_bytes_fp32": lora["base_weight_bytes"] if lora else None,
                "seconds_per_step": r["seconds_per_step"],
                "lora_seconds_per_step": lora["seconds_per_step"] if lora else None,
                "train_seconds": r["train_seconds"],
                "trainable_params": r["trainable_params"],
            }
        )
    dpo = [read_json(p) for p in sorted(week.glob("dpo-*/results.json"))]
    serve = _load(week / "serve" / "results.json")
    engine = _load(week / "serve-engine" / "results.json")  # the same on our engine
    return {"tasks": tasks, "qlora": qlora, "dpo": dpo, "serve": serve, "serve_engine": engine}


def acceptance(s: dict) -> dict:
    """Each acceptance item of the week: the measured value and whether it passes."""
    out: dict = {}
    for t in s["tasks"]:
        base = t["base_exact"]
        if (
            t["task"] in TASKS and not TASKS[t["task"]].generated
        ):  # a real dataset: an instruct base already scores some
            learned = t["adapter_exact"] >= 0.85 and base is not None and t["adapter_exact"] > base
        else:  # the digit tasks: unknown to the base, learned by the adapter
            learned = t["adapter_exact"] >= 0.9 and (base is not None and base < 0.1)
        out[f"sft-{t['task']}"] = {
            "adapter_exact": t["adapter_exact"],
            "base_exact": base,
            "train_seconds": t["train_seconds"],
            "trainable_fraction": t["trainable_fraction"],
            "pass": learned and t["train_seconds"] <= 600 and t["trainable_fraction"] <= 0.05,
        }
    for q in s["qlora"]:
        gap = None if q["lora_exact"] is None else 100 * (q["lora_exact"] - q["exact"])
        out[f"qlora-{q['task']}"] = {"points_below_lora": gap, "pass": gap is not None and gap <= 5}
    for d in s["dpo"]:
        out[f"dpo-{d['task']}"] = {
            "reward_accuracy": d["reward_accuracy"],
            "exact_match_change_points": d["exact_match_change_points"],
            "pass": d["reward_accuracy"] >= 0.9 and d["exact_match_change_points"] >= -2,
        }
    if s["serve"]:
        for r in s["serve"]["scores"]:
            failed = r.get("failed_requests", 0)
            out[f"served-{r['adapter']}"] = {
                "diff_points": r["diff_points"],
                "failed_requests": failed,
                "pass": r["diff_points"] is not None and abs(r["diff_points"]) <= 2 and not failed,
            }
    for r in (s.get("serve_engine") or {}).get("scores", []):  # our engine: equal to local
        failed = r.get("failed_requests", 0)
        out[f"engine-served-{r['adapter']}"] = {
            "diff_points": r["diff_points"],
            "failed_requests": failed,
            "pass": r["diff_points"] == 0 and not failed,
        }
    return out


def plot_before_after(s: dict, path: Path) -> Path:
    """Exact match per task: base model, LoRA adapter (local), the same adapter served."""
    served = {r["adapter"]: r["served_exact"] for r in (s["serve"] or {}).get("scores", [])}
    ours = {
        r["adapter"]: r["served_exact"] for r in (s.get("serve_engine") or {}).get("scores", [])
    }
    names = [t["task"] for t in s["tasks"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = range(len(names))
    series = [
        ("base model", [100 * (t["base_exact"] or 0) for t in s["tasks"]], -0.3),
        ("LoRA adapter (local)", [100 * t["adapter_exact"] for t in s["tasks"]], -0.1),
        ("LoRA adapter (vLLM)", [100 * (served.get(n) or 0) for n in names], 0.1),
        ("LoRA adapter (our engine)", [100 * (ours.get(n) or 0) for n in names], 0.3),
    ]
    for label, vals, dx in series:
        bars = ax.bar([x + dx for x in xs], vals, 0.2, label=label)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(list(xs), names)
    ax.set_ylabel("exact match on held-out prompts (%)")
    ax.set_ylim(0, 125)
    models = {Path(t["model"]).name for t in s["tasks"]}
    base = models.pop() if len(models) == 1 else "the base"
    base = "Week 1's model" if base == "hf-model" else base  # the default: week 1's export
    ax.set_title(f"{base} before and after one LoRA per task")
    ax.legend(loc="upper center", ncol=2, fontsize=8)
    return save(fig, path)


@dataclass
class SummaryConfig:
    """The week's table, acceptance checks and plot, from its results files."""

    runs_dir: Path | None = None  # results root; none: runs/, or $IE_RUNS_DIR


def main(cfg: SummaryConfig) -> dict:
    week = (cfg.runs_dir or runs_root()) / "week3"
    s = collect(week)
    if not s["tasks"]:
        raise FileNotFoundError(f"no runs/week3/sft-*/results.json under {week}; run make week3")
    out = week / "summary"
    s["acceptance"] = acceptance(s)
    plot_before_after(s, out / "before_after.png")
    s["plots"] = ["before_after.png"]
    for name, a in s["acceptance"].items():
        log.info("%-20s %s %s", name, "PASS" if a["pass"] else "FAIL", a)
    write_results(out / "results.json", s)
    return s


def parse_args(argv: list[str] | None = None) -> SummaryConfig:
    return parse(SummaryConfig, argv, description=__doc__)


if __name__ == "__main__":
    main(parse_args())
