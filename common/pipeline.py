"""The curriculum's main job, step by step, with a summary of what failed at the end.

    python -m common.pipeline                       # every week, CPU profile (= make all)
    python -m common.pipeline --only week2 week3    # some parts (= make week2 week3)
    python -m common.pipeline --profile gpu         # the GPU profile (= make all PROFILE=gpu)
    python -m common.pipeline --profile gpu --dry-run   # print the steps, run nothing

Each step is one `python -m ...` command. A step that fails does not stop the run: the steps
that need its output are skipped (and say why), the others go on. At the end one table lists
every step and every variant or sweep cell that failed inside a step that itself finished
(a quantized variant that could not be made, a sweep cell whose server died), and the exit
status is non-zero when anything did.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from common.cli import build_parser, config_from_args
from common.cpu import CpuCaps, cpu_caps
from common.results import REPO_ROOT, get_logger, read_json, runs_root

log = get_logger("pipeline")

# the real model of the GPU profile (weeks 2 and 3): small, instruction-tuned, LoRA-servable
GPU_MODEL = "Qwen/Qwen2.5-0.5B-Instruct"


@dataclass(frozen=True)
class Step:
    name: str  # unique, e.g. "week1/train"
    group: str  # the make target that runs it: week0, week1, week2, week2-engine, week3, report
    args: tuple[str, ...]  # after `python -m`
    needs: tuple[str, ...] = ()  # steps whose output this one reads

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", *self.args]


DRAFT_RUN = "gpt-llama-bpe-draft"  # week 1's draft model run; exported to runs/week1/hf-draft


def _s(name: str, cmd: str, needs: tuple[str, ...] = (), group: str = "") -> Step:
    return Step(name, group or name.split("/")[0], tuple(shlex.split(cmd)), needs)


def _weeks01(preset: str, device: str) -> list[Step]:
    """Weeks 0 and 1 on their `preset`; `device` is added to the steps that pick one."""
    return [
        _s("week0/train", f"week0_pytorch.train --preset {preset}{device}"),
        _s("week0/quantize", "week0_pytorch.quantize", ("week0/train",)),
        _s("week0/micrograd", "week0_pytorch.micrograd.train"),
        _s("week1/prepare", "week1_gpt_kvcache.prepare"),
        _s("week1/train", f"week1_gpt_kvcache.train --preset {preset}", ("week1/prepare",)),
        _s("week1/export", "week1_gpt_kvcache.export", ("week1/train",)),
        _s("week1/bench", f"week1_gpt_kvcache.bench{device}", ("week1/export",)),
        # the draft model of speculative decoding (week 2): same corpus and tokenizer, smaller
        _s(
            "week1/train-draft",
            f"week1_gpt_kvcache.train --preset {preset} --size draft --run-name {DRAFT_RUN}",
            ("week1/prepare",),
        ),
        _s(
            "week1/export-draft",
            f"week1_gpt_kvcache.export --checkpoint runs/week1/{DRAFT_RUN}/checkpoint.pt "
            "--out runs/week1/hf-draft",
            ("week1/train-draft",),
        ),
    ]


def bf16_steps(caps: CpuCaps | None = None) -> list[Step]:
    """Our engine vs vLLM CPU in bfloat16: only on a CPU with native BF16 instructions (AVX-512
    BF16 or AMX; `caps`: this machine's when None), where `--dtype auto` serves in bf16. Elsewhere
    bf16 is emulated and the comparison would measure the emulation, so the step is left out."""
    caps = caps or cpu_caps()
    if not (caps.avx512_bf16 or caps.amx):
        return []
    return [
        _s(
            "week2/engine-bench-bf16",
            "week2_serving.engine.bench --config "
            "week2_serving/harness/configs/engine-cpu-bf16.yaml --no-memory-trace",
            ("week1/export",),
            "week2-engine",
        )
    ]


def cpu_steps(caps: CpuCaps | None = None) -> list[Step]:
    return [
        *_weeks01("cpu", ""),
        _s("week2/quantize", "week2_serving.quant.quantize", ("week1/export",)),
        _s(
            "week2/sweep",
            "week2_serving.harness.sweep week2_serving/harness/configs/cpu.yaml",
            ("week1/export",),
        ),
        _s("week2/quality", "week2_serving.quant.quality", ("week2/quantize",)),
        # capacity under an SLO and multi-turn prefix caching: small defaults; the report shows them
        _s("week2/capacity", "week2_serving.harness.capacity", ("week1/export",)),
        _s("week2/prefix-study", "week2_serving.harness.prefix_study", ("week1/export",)),
        _s("week2/report", "week2_serving.report runs/week2/sweep-cpu", ("week2/sweep",)),
        _s("week2/validate", "week2_serving.harness.validate", ("week1/export",)),
        _s("week2/engine-bench", "week2_serving.engine.bench", ("week1/export",), "week2-engine"),
        # where a step's time goes, the speed levers off and on (the README's breakdown plot)
        _s(
            "week2/engine-profile",
            "week2_serving.engine.profile",
            ("week1/export",),
            "week2-engine",
        ),
        _s(
            "week2/spec-bench",
            "week2_serving.engine.spec_bench",
            ("week1/export", "week1/export-draft"),
            "week2-engine",
        ),
        *bf16_steps(caps),
        _s(
            "week2/engine-report",
            "week2_serving.report runs/week2/sweep-engine-cpu",
            ("week2/engine-bench",),
            "week2-engine",
        ),
        *_week3_steps("", ("week1/export",)),
        _s("report", "common.report"),
    ]


def _week3_steps(preset: str, needs: tuple[str, ...]) -> list[Step]:
    p = f" --preset {preset}" if preset else ""
    data = ("week3/data",)
    return [
        _s("week3/data", f"week3_finetune_lora.data{p}", needs),
        _s("week3/sft-reverse", f"week3_finetune_lora.sft --task reverse{p}", data),
        _s("week3/sft-sort", f"week3_finetune_lora.sft --task sort{p}", data),
        _s("week3/sft-shift", f"week3_finetune_lora.sft --task shift{p}", data),
        _s("week3/qlora-sort", f"week3_finetune_lora.sft --task sort --quant nf4{p}", data),
        _s("week3/dpo-reverse", f"week3_finetune_lora.dpo --task reverse{p}", data),
        _s(
            "week3/serve",
            f"week3_finetune_lora.serve{p}",
            ("week3/sft-reverse", "week3/sft-sort", "week3/sft-shift"),
        ),
        _s(  # the same served evaluation on our engine's multi-LoRA, beside vLLM's
            "week3/serve-engine",
            f"week3_finetune_lora.serve --server engine --run-name serve-engine --skip-bench{p}",
            ("week3/sft-reverse", "week3/sft-sort", "week3/sft-shift"),
        ),
        _s("week3/summary", "week3_finetune_lora.summary", data),
    ]


def _week3_gpu_steps() -> list[Step]:
    """Week 3 on GPU_MODEL: SST-2 (a public dataset) beside the digit tasks, QLoRA, DPO, and
    multi-LoRA on vLLM's CUDA build (week3_finetune_lora/README.md, "On a GPU")."""
    data = ("week3/data",)
    return [
        _s("week3/data", "week3_finetune_lora.data --preset gpu"),
        _s("week3/sft-sst2", "week3_finetune_lora.sft --preset gpu --task sst2", data),
        _s("week3/sft-reverse", "week3_finetune_lora.sft --preset gpu --task reverse", data),
        _s(
            "week3/qlora-sst2", "week3_finetune_lora.sft --preset gpu --task sst2 --quant nf4", data
        ),
        _s("week3/dpo-sst2", "week3_finetune_lora.dpo --preset gpu", data),
        _s(
            "week3/serve",
            "week3_finetune_lora.serve --preset gpu",
            ("week3/sft-sst2", "week3/sft-reverse"),
        ),
        _s("week3/summary", "week3_finetune_lora.summary", data),
    ]


def gpu_steps() -> list[Step]:
    """Weeks 0-1 on their GPU presets; weeks 2-3 on GPU_MODEL from the hub (needs internet)."""
    return [
        *_weeks01("gpu", " --device cuda"),
        _s(
            "week2/sweep", "week2_serving.harness.sweep week2_serving/harness/configs/gpu-vllm.yaml"
        ),
        _s(
            "week2/report",
            "week2_serving.report runs/week2/sweep-gpu-vllm",
            ("week2/sweep",),
        ),
        *_week3_gpu_steps(),
        _s("report", "common.report"),
    ]


PROFILES: dict[str, Callable[[], list[Step]]] = {"cpu": cpu_steps, "gpu": gpu_steps}  # --profile


GROUPS = ("week0", "week1", "week2", "week2-engine", "week3", "report")


def select(steps: list[Step], groups: list[str] | None) -> list[Step]:
    """The steps of `groups` (make targets), in pipeline order; all when None."""
    if groups is None:
        return steps
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; choose from {', '.join(GROUPS)}")
    return [s for s in steps if s.group in groups]


# ---- running ----


@dataclass
class Outcome:
    step: Step
    status: str  # ok | failed | skipped
    seconds: float = 0.0
    detail: str = ""


def run_steps(steps: list[Step], runner: Callable[[list[str]], int] | None = None) -> list[Outcome]:
    """Run `steps` in order; a failed step's dependants are skipped, the rest go on."""
    runner = runner or _run
    done: dict[str, str] = {}
    out: list[Outcome] = []
    for i, step in enumerate(steps, 1):
        blocked = [n for n in step.needs if done.get(n, "ok") != "ok"]
        if blocked:
            o = Outcome(step, "skipped", detail=f"needs {', '.join(blocked)}, which did not run")
        else:
            log.info("[%d/%d] %s: %s", i, len(steps), step.name, shlex.join(step.args))
            t0 = time.perf_counter()
            code = runner(step.command)
            o = Outcome(step, "ok" if code == 0 else "failed", time.perf_counter() - t0)
            if code != 0:
                o.detail = f"exit code {code}"
                log.error(
                    "%s failed (%s); going on with the steps that do not need it",
                    *(step.name, o.detail),
                )
        done[step.name] = o.status
        out.append(o)
    return out


def _run(cmd: list[str]) -> int:
    return subprocess.call(cmd, cwd=REPO_ROOT)


def failures_in_results(root: Path, weeks: set[str] | None = None) -> list[str]:
    """What failed inside steps that finished, under runs/<week>/ for `weeks` (all when None):
    sweep cells (error.json) and variants whose results.json says status error."""
    found = []
    if weeks is not None:
        return [f for w in sorted(weeks) for f in failures_in_results(root / w)]
    for path in sorted(root.glob("**/error.json")):
        rel = path.parent.relative_to(root)
        try:
            first = str(read_json(path).get("error", "")).splitlines()[:1]
        except (ValueError, AttributeError):
            first = ["unreadable error.json"]
        found.append(f"{rel}: {first[0] if first else 'failed'}")
    for path in sorted(root.glob("**/results.json")):
        try:
            data = read_json(path)
        except ValueError:
            found.append(f"{path.parent.relative_to(root)}: results.json is not valid JSON")
            continue
        variants = data.get("variants") if isinstance(data, dict) else None
        for name, rec in variants.items() if isinstance(variants, dict) else ():
            if isinstance(rec, dict) and rec.get("status") in ("error", "failed"):
                err = str(rec.get("error", "failed")).splitlines()[:1]
                found.append(f"{path.parent.relative_to(root)} / {name}: {err[0] if err else ''}")
    return found


def summary(outcomes: list[Outcome], failures: list[str]) -> str:
    lines = ["", "== summary ==", f"{'step':<22} {'status':<8} {'time':>8}  detail"]
    for o in outcomes:
        t = f"{o.seconds:.0f} s" if o.status != "skipped" else ""
        lines.append(f"{o.step.name:<22} {o.status:<8} {t:>8}  {o.detail}")
    if failures:
        lines += ["", f"{len(failures)} variant(s) or cell(s) failed inside finished steps:"]
        lines += [f"  - {f}" for f in failures]
    bad = sum(o.status != "ok" for o in outcomes)
    lines.append("")
    lines.append(
        "everything ran"
        if not bad and not failures
        else f"{bad} step(s) failed or skipped, {len(failures)} variant(s)/cell(s) failed"
    )
    return "\n".join(lines)


@dataclass
class PipelineConfig:
    """Run the curriculum's main job step by step (make all, make weekN)."""

    profile: Literal["cpu", "gpu"] = "cpu"  # cpu: the 2-core defaults; gpu: GPU presets, hub model
    only: list[str] | None = None  # some of: week0 week1 week2 week2-engine week3 report
    dry_run: bool = False  # print the steps, run nothing


def main(argv: list[str] | None = None) -> int:
    p = build_parser(PipelineConfig, description=__doc__)
    a = config_from_args(PipelineConfig, p.parse_args(argv))
    try:
        steps = select(PROFILES[a.profile](), a.only)
    except ValueError as e:
        p.error(str(e))
    if a.dry_run:
        for s in steps:
            needs = f"   (needs {', '.join(s.needs)})" if s.needs else ""
            print(f"{s.name:<22} python -m {shlex.join(s.args)}{needs}")
        return 0
    outcomes = run_steps(steps)
    weeks = None if a.only is None else {s.name.split("/")[0] for s in steps} - {"report"}
    failures = failures_in_results(runs_root(), weeks)
    print(summary(outcomes, failures), flush=True)
    return 0 if all(o.status == "ok" for o in outcomes) and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
