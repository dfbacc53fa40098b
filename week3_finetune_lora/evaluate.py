"""Score a model on a task's held-out rows: a local model (+ adapter) or a served endpoint.

    python -m week3_finetune_lora.evaluate --task reverse                       # base model
    python -m week3_finetune_lora.evaluate --task reverse --adapter runs/week3/sft-reverse/adapter
    python -m week3_finetune_lora.evaluate --task reverse --base-url http://127.0.0.1:8000 \\
        --served-model reverse                                                  # a served adapter

The scorer (scoring.py) is the same for both paths, so the numbers compare (acceptance: a
served adapter within 2 points of the same weights run locally). Requests the server did not
answer properly are counted in `failed` with their errors, not scored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from common.cli import parse
from common.results import get_logger, save_results
from common.timing import environment
from week3_finetune_lora.config import (
    GPU_MODEL,
    check_device_dtype,
    default_data_dir,
    default_model,
    from_preset,
)
from week3_finetune_lora.generation import complete_served, generate_local, load_local
from week3_finetune_lora.rows import task_rows
from week3_finetune_lora.scoring import evaluate_rows
from week3_finetune_lora.tasks import get_task

log = get_logger("week3.eval")


@dataclass
class EvalConfig:
    """Exact match (+ the task's checks) on a task's held-out rows."""

    task: str = "reverse"  # a task name from tasks.TASKS
    model: str | None = None  # base: HF folder or hub id; none: runs/week1/hf-model
    adapter: str | None = None  # LoRA adapter folder (local eval)
    data_dir: str | None = None  # task files; none: runs/week3/data
    base_url: str | None = None  # score this OpenAI-compatible server instead of a local model
    served_model: str | None = None  # model/adapter name on the server; none: the task
    max_new_tokens: int = 12  # greedy tokens per answer
    limit: int | None = None  # score only the first N test rows
    run_name: str | None = None  # runs/week3/<run_name>/; none: eval-<task>
    device: str = "cpu"  # local eval: auto | cpu | cuda | cuda:N
    dtype: str = "float32"  # local eval: auto | float32 | bfloat16 | float16
    offline: bool | None = (
        None  # read the local hub cache only; none: only if HF_HUB_OFFLINE is set
    )

    def __post_init__(self) -> None:
        get_task(self.task)
        check_device_dtype(self.device, self.dtype)
        self.model = self.model or default_model()
        self.data_dir = self.data_dir or default_data_dir()
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit={self.limit} must be >= 1 (or none: every row)")


PRESETS = {
    "tiny": dict(limit=16),
    "cpu": {},
    "gpu": dict(model=GPU_MODEL, device="auto", dtype="auto"),
}


def make_config(preset: str = "cpu", **overrides) -> EvalConfig:
    return from_preset(EvalConfig, PRESETS, preset, **overrides)


def main(cfg: EvalConfig) -> dict:
    rows = task_rows(cfg.data_dir, cfg.task, "test", cfg.limit)
    if cfg.base_url:
        name = cfg.served_model or cfg.task
        errors: list[str] = []

        def gen(prompts):
            answers = complete_served(cfg.base_url, name, prompts, cfg.max_new_tokens)
            errors.extend(answers.errors)
            return answers.outputs

        where = f"{cfg.base_url} model={name}"
    else:
        model, tok = load_local(cfg.model, cfg.adapter, cfg.device, cfg.dtype, cfg.offline)
        errors = []

        def gen(prompts):
            return generate_local(model, tok, prompts, cfg.max_new_tokens)

        where = f"local {cfg.model}" + (f" + {cfg.adapter}" if cfg.adapter else "")
    res = evaluate_rows(rows, gen)
    res.pop("per_row")
    exact = "—" if res["exact_match"] is None else f"{100 * res['exact_match']:.1f}%"
    log.info("%s on %s: exact match %s, %d failed", cfg.task, where, exact, res["failed"])
    for e in errors:
        log.warning("failed request: %s", e)
    out = {"config": asdict(cfg), "where": where, **res, "errors": errors}
    save_results("week3", cfg.run_name or f"eval-{cfg.task}", {**out, "environment": environment()})
    return out


def parse_args(argv: list[str] | None = None) -> EvalConfig:
    return parse(EvalConfig, argv, presets=PRESETS, default_preset="cpu", description=__doc__)


if __name__ == "__main__":
    main(parse_args())
