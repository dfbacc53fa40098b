"""Binary-scored evals: one scorer for a local model (+adapter) and for a served endpoint.

Every answer is scored 0 or 1: exact match after stripping whitespace, plus the task's own
checks (tasks.py) that say *how* a wrong answer is wrong (right digits in the wrong order,
descending instead of ascending, ...). An answer that never came back (a failed request,
`None`) is not scored at all: it is counted as failed, never as wrong.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from week3_finetune_lora.tasks import TASKS

Answer = str | None  # None: the request for it failed


def normalize(text: str) -> str:
    """What the scorer compares: the first line of the answer, without surrounding spaces."""
    return text.strip().split("\n")[0].strip()


def task_checks(task: str, x: str, output: str) -> dict[str, bool]:
    """The task's binary checks beyond exact match (each True/False, never a partial score);
    a task not in the table has none."""
    spec = TASKS.get(task)
    return spec.checks(x, normalize(output)) if spec else {}


def score(rows: Sequence[dict], outputs: Sequence[Answer]) -> dict:
    """Exact match and the rate of each task check over the answered `rows` (dicts with
    prompt, completion and optionally task + input). `per_row` is None where unanswered."""
    if len(rows) != len(outputs):
        raise ValueError(f"{len(rows)} rows but {len(outputs)} outputs")
    per_row = [
        None if o is None else normalize(o) == normalize(r["completion"])
        for r, o in zip(rows, outputs)
    ]
    answered = [(r, o, e) for r, o, e in zip(rows, outputs, per_row) if o is not None]
    rates: dict[str, list[bool]] = {}
    for r, o, _ in answered:
        if "task" in r and "input" in r:
            for k, v in task_checks(r["task"], r["input"], o).items():
                rates.setdefault(k, []).append(v)
    return {
        "n": len(answered),
        "failed": len(rows) - len(answered),
        "exact_match": sum(e for _, _, e in answered) / len(answered) if answered else None,
        "checks": {k: sum(v) / len(v) for k, v in rates.items()},
        "examples": [
            {"prompt": r["prompt"], "expected": r["completion"], "output": o, "correct": e}
            for r, o, e in answered[:5]
        ],
        "per_row": per_row,
    }


def evaluate_rows(rows: Sequence[dict], generate: Callable[[list[str]], list[Answer]]) -> dict:
    """Score `generate` (prompts -> outputs) on `rows`, timing it."""
    t0 = time.perf_counter()
    outputs = generate([r["prompt"] for r in rows])
    res = score(rows, outputs)
    res["seconds"] = time.perf_counter() - t0
    return res


def near_miss_rate(task: str, res: dict) -> float:
    """Share of answers of the right kind (the task's form check) that are still wrong."""
    form = res["checks"].get(TASKS[task].form_check, 0.0) if task in TASKS else 0.0
    return form - (res["exact_match"] or 0.0)


def max_new_tokens_for(tok, rows: list[dict]) -> int:
    """Room for the longest expected answer plus EOS and a little slack."""
    return max(len(tok(r["completion"])["input_ids"]) for r in rows) + 2
