"""Task rows: made (generated or from a hub dataset), written and read back as JSONL.

Rows are {"prompt": "reverse:48193=", "completion": "39184", "rejected": ..., "task": ...,
"input": ...} (trl's prompt–completion format plus what DPO and the scorer use); the chat
files hold the same rows as {"prompt": [{"role": "user", ...}], "completion": [{"role":
"assistant", ...}]}. Every file read is checked row by row, with the file and line of a bad row.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from week3_finetune_lora.tasks import HubDataset, Task

REQUIRED_FIELDS = ("prompt", "completion")
PAIR_FIELDS = ("prompt", "completion", "rejected")  # DPO's preference pairs


def make_rows(task: Task, n: int, rng: random.Random, lo: int, hi: int, exclude: set[str]) -> list:
    """`n` distinct rows of a generated task whose inputs are not in `exclude` (the inputs get
    added to it, so the next call cannot repeat them: train and test stay disjoint)."""
    rows, tries = [], 0
    while len(rows) < n:
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(
                f"task {task.name}: only {len(rows)} distinct inputs of length {lo}-{hi} found "
                f"for {n} requested; lower n or widen the lengths"
            )
        x = task.sample(rng, lo, hi)
        if x in exclude:
            continue
        exclude.add(x)
        rows.append(
            {
                "prompt": task.prompt(x),
                "completion": task.answer(x),
                "rejected": task.wrong(x, rng),
                "task": task.name,
                "input": x,
            }
        )
    return rows


def load_hub_rows(
    spec: HubDataset, split: str, limit: int | None, seed: int, offline: bool = False
) -> list[dict]:
    """`limit` rows (a seeded shuffle) of one split of `spec`, through `datasets.load_dataset`."""
    from datasets import DownloadConfig, load_dataset

    try:
        ds = load_dataset(
            spec.path,
            spec.config_name,
            data_files=spec.data_files,
            split=split,
            download_config=DownloadConfig(local_files_only=offline),
        )
    except Exception as e:  # offline and not cached, unknown id, missing split, ...
        raise FileNotFoundError(
            f"dataset {spec.path!r} (split {split!r}) could not be loaded "
            f"({'offline: cache only' if offline else 'online'}; {type(e).__name__}: {e}). "
            "Run once with internet, or point HubDataset.path/data_files at local files."
        ) from e
    missing = [c for c in (spec.text_column, spec.label_column) if c not in ds.column_names]
    if missing:
        raise ValueError(
            f"dataset {spec.path!r} has columns {ds.column_names}, not {missing}; set "
            "HubDataset.text_column / label_column"
        )
    ds = ds.shuffle(seed=seed)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    return [spec.row(r[spec.text_column], int(r[spec.label_column])) for r in ds]


def to_chat(row: dict) -> dict:
    """The same row in trl's conversational prompt–completion format."""
    return {
        "prompt": [{"role": "user", "content": row["prompt"]}],
        "completion": [{"role": "assistant", "content": row["completion"]}],
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def write_task(out: Path, train: list[dict], test: list[dict]) -> dict[str, str]:
    """A task's folder: train.jsonl, test.jsonl and the chat copy of train."""
    return {
        "train": str(write_jsonl(out / "train.jsonl", train)),
        "test": str(write_jsonl(out / "test.jsonl", test)),
        "train_chat": str(write_jsonl(out / "train_chat.jsonl", [to_chat(r) for r in train])),
    }


def read_jsonl(path: Path | str, required: tuple[str, ...] = REQUIRED_FIELDS) -> list[dict]:
    """Rows of a JSONL file, each checked for the `required` fields (string values)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"dataset file {path} does not exist (run week3_finetune_lora.data)"
        )
    rows = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno} is not valid JSON ({e})") from e
            check_row(row, required, where=f"{path}:{lineno}")
            rows.append(row)
    if not rows:
        raise ValueError(f"dataset file {path} has no rows")
    return rows


def check_row(row: object, required: tuple[str, ...], where: str) -> None:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    missing = [k for k in required if k not in row]
    if missing:
        raise ValueError(
            f"{where}: row is missing field(s) {missing} (has {sorted(row)}); every row needs "
            f"{list(required)}"
        )
    for k in required:
        if not isinstance(row[k], (str, list)):
            raise ValueError(f"{where}: field {k!r} must be a string or a list of messages")


def task_rows(
    data_dir: Path | str,
    task: str,
    split: str = "test",
    limit: int | None = None,
    required: tuple[str, ...] = REQUIRED_FIELDS,
) -> list[dict]:
    """The first `limit` rows of runs/week3/data/<task>/<split>.jsonl (None: all)."""
    return read_jsonl(Path(data_dir) / task / f"{split}.jsonl", required)[:limit]


def load_dataset_rows(dataset: str, split: str = "train") -> list[dict]:
    """Rows from a local JSONL file, a folder holding `<split>.jsonl`, or (online) a hub id."""
    path = Path(dataset)
    if path.is_dir():
        return read_jsonl(path / f"{split}.jsonl")
    if path.suffix == ".jsonl" or path.exists():
        return read_jsonl(path)
    # Online path: a Hugging Face dataset id with prompt/completion columns.
    from datasets import load_dataset

    try:
        ds = load_dataset(dataset, split=split)
    except Exception as e:  # offline, unknown id, ...: say what was tried
        raise FileNotFoundError(
            f"dataset {dataset!r} is neither a local JSONL file/folder nor a loadable hub "
            f"dataset ({type(e).__name__}: {e})"
        ) from e
    rows = [dict(r) for r in ds]
    for i, row in enumerate(rows):
        check_row(row, REQUIRED_FIELDS, where=f"{dataset}[{split}][{i}]")
    return rows
