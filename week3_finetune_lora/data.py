"""Small tasks with exact answers, written as JSONL for trl (prompt–completion and chat).

    python -m week3_finetune_lora.data                       # runs/week3/data/<task>/{train,test}.jsonl
    python -m week3_finetune_lora.data --tasks reverse --n-train 2000 --n-test 200
    python -m week3_finetune_lora.data --preset gpu          # + SST-2 from the hub (`datasets`)

Why digit tasks: week 1's model is tiny (3.5M parameters) and its BPE was trained on Python
docs. A bare digit string like "48193" tokenizes one digit per token, so a task over digit
strings is a clean per-token problem the base model has never seen (it scores ~0%) and a
rank-8 LoRA can learn in minutes. The prompt format "reverse:48193=" keeps ':' and '=' as
their own tokens, so the tokens of prompt+completion are exactly the prompt's tokens followed
by the completion's (check with `tokenizer("reverse:48193=39184")`).

Each task also has a *plausible wrong answer* (`wrong`), the mistake a half-trained model
makes; DPO (dpo.py) uses it as the rejected completion.

The `gpu` preset adds a public dataset, SST-2 (stanfordnlp/sst2: movie-review sentences
labelled negative/positive), loaded with `datasets.load_dataset` and written in the same row
format: prompt "Review: <sentence>\nSentiment:", completion " positive", rejected " negative"
(the other label: the mistake DPO pushes down). Its answers are exact too, so the same scorer
serves it. The dataset's id, splits and columns live in `HubDataset`, so a copy with the
same columns in local JSON/Parquet files loads the same way (`path="json"`, `data_files=`).

Rows are {"prompt": "reverse:48193=", "completion": "39184"} (trl's prompt–completion format);
the chat files hold the same rows as {"prompt": [{"role": "user", ...}], "completion":
[{"role": "assistant", ...}]}. Train and test are disjoint (no test input appears in train)
and seeded.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from common.results import get_logger, run_dir, write_results

log = get_logger("week3.data")

REQUIRED_FIELDS = ("prompt", "completion")


# ---- the tasks: input string -> exact answer, and a plausible wrong answer ------------------


def _reverse(x: str) -> str:
    return x[::-1]


def _bump_one_digit(y: str, rng: random.Random) -> str:
    """Fallback mistake when the task's own one equals the answer (e.g. '1111')."""
    i = rng.randrange(len(y))
    return y[:i] + str((int(y[i]) + 1) % 10) + y[i + 1 :]


def _reverse_wrong(x: str, rng: random.Random) -> str:
    # A near miss: the right answer with two different neighbouring digits swapped.
    y = list(x[::-1])
    spots = [i for i in range(len(y) - 1) if y[i] != y[i + 1]]
    if not spots:
        return _bump_one_digit("".join(y), rng)
    i = rng.choice(spots)
    y[i], y[i + 1] = y[i + 1], y[i]
    return "".join(y)


def _sort(x: str) -> str:
    return "".join(sorted(x))


def _sort_wrong(x: str, rng: random.Random) -> str:
    # The classic mistake: descending instead of ascending order.
    y = "".join(sorted(x, reverse=True))
    return y if y != _sort(x) else _bump_one_digit(y, rng)


def _shift(x: str) -> str:
    return "".join(str((int(c) + 1) % 10) for c in x)


def _shift_wrong(x: str, rng: random.Random) -> str:
    # One digit left unshifted (copied through), the others right.
    y = list(_shift(x))
    i = rng.randrange(len(y))
    y[i] = x[i]
    return "".join(y)


def _add(x: str) -> str:
    a, b = x.split("+")
    return str(int(a) + int(b))


def _add_wrong(x: str, rng: random.Random) -> str:
    # Forgot the carry: add digit by digit, keep only the last digit of each column.
    a, b = x.split("+")
    width = max(len(a), len(b))
    a, b = a.zfill(width), b.zfill(width)
    out = "".join(str((int(p) + int(q)) % 10) for p, q in zip(a, b)).lstrip("0") or "0"
    if out == _add(x):  # no carry anywhere: be off by one instead
        out = str(int(out) + 1)
    return out


def _digits(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(rng.randint(lo, hi)))


def _addends(rng: random.Random, lo: int, hi: int) -> str:
    return f"{rng.randint(10 ** (lo - 1), 10**hi - 1)}+{rng.randint(10 ** (lo - 1), 10**hi - 1)}"


@dataclass(frozen=True)
class Task:
    name: str
    answer: Callable[[str], str]
    wrong: Callable[[str, random.Random], str]
    sample: Callable[[random.Random, int, int], str]  # (rng, min_len, max_len) -> input

    def prompt(self, x: str) -> str:
        return f"{self.name}:{x}="


TASKS: dict[str, Task] = {
    "reverse": Task("reverse", _reverse, _reverse_wrong, _digits),
    "sort": Task("sort", _sort, _sort_wrong, _digits),
    "shift": Task("shift", _shift, _shift_wrong, _digits),  # each digit + 1 (mod 10)
    "add": Task("add", _add, _add_wrong, _addends),  # harder: not in the default set
}


# ---- a public dataset from the hub, as a task with exact answers ----------------------------


@dataclass(frozen=True)
class HubDataset:
    """A labelled text dataset turned into prompt/completion rows (answer = the label's word)."""

    task: str  # the task name its rows and adapters go by, e.g. "sst2"
    path: str  # datasets.load_dataset's first argument: a hub id, or "json"/"parquet"
    text_column: str
    label_column: str  # integer class ids
    labels: tuple[str, ...]  # class id -> the answer word
    train_split: str = "train"
    test_split: str = "validation"
    config_name: str | None = None  # load_dataset's `name` (a dataset's configuration)
    data_files: dict[str, str] | None = None  # split -> local file(s), with path="json" etc.
    template: str = "Review: {text}\nSentiment:"  # the prompt; {text} is the row's text

    def __post_init__(self) -> None:
        if self.task in TASKS:
            raise ValueError(f"hub task {self.task!r} clashes with a built-in task; rename it")
        if len(self.labels) < 2 or len(set(self.labels)) != len(self.labels):
            raise ValueError(
                f"hub task {self.task!r}: need >= 2 distinct labels, got {self.labels}"
            )
        if "{text}" not in self.template:
            raise ValueError(f"hub task {self.task!r}: template {self.template!r} lacks '{{text}}'")

    def row(self, text: str, label: int) -> dict:
        """One row: the label's word as the answer, the next label's as the rejected one."""
        if not 0 <= label < len(self.labels):
            raise ValueError(
                f"{self.path}: label {label} outside 0..{len(self.labels) - 1} (unlabelled "
                "split? SST-2's test split has none: use its validation split)"
            )
        return {
            "prompt": self.template.format(text=text.strip()),
            "completion": " " + self.labels[label],  # a space: the word's usual token
            "rejected": " " + self.labels[(label + 1) % len(self.labels)],
            "task": self.task,
            "input": text.strip(),
        }


# SST-2 (GLUE): 67k train / 872 validation sentences; the test split's labels are hidden.
SST2 = HubDataset(
    task="sst2",
    path="stanfordnlp/sst2",
    text_column="sentence",
    label_column="label",
    labels=("negative", "positive"),
)
HUB_TASKS: dict[str, HubDataset] = {SST2.task: SST2}


def known_tasks() -> list[str]:
    """Every task name a run may use: the digit tasks and the hub datasets."""
    return sorted([*TASKS, *HUB_TASKS])


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


# ---- generation ----------------------------------------------------------------------------


@dataclass
class DataConfig:
    tasks: tuple[str, ...] = ("reverse", "sort", "shift")
    n_train: int = 8000  # rows per task (4 digits: 10,000 possible inputs in all)
    n_test: int = 200  # held-out rows per task (inputs never seen in train)
    min_len: int = 4  # digits per input (per addend for `add`); a fixed length keeps every
    max_len: int = 4  # answer digit at a fixed distance from its source, which a tiny model
    #                   learns much faster than variable lengths (measured: see README)
    seed: int = 0
    out_name: str = "data"  # runs/week3/<out_name>/
    hub: tuple[HubDataset, ...] = ()  # public datasets written beside the digit tasks
    hub_n_train: int | None = 4000  # rows per hub dataset (None = the whole split)
    hub_n_test: int | None = 500
    offline: bool | None = None  # None: offline only if HF_HUB_OFFLINE is set

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        self.hub = tuple(self.hub)
        bad = [h for h in self.hub if not isinstance(h, HubDataset)]
        if bad:
            raise ValueError(f"hub entries must be HubDataset, got {bad}")
        for n in (self.hub_n_train, self.hub_n_test):
            if n is not None and n < 1:
                raise ValueError(
                    f"hub_n_train={self.hub_n_train}, hub_n_test={self.hub_n_test}: "
                    "each must be >= 1 or None (all)"
                )
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown}; choose from {sorted(TASKS)}")
        if not 2 <= self.min_len <= self.max_len:
            raise ValueError(f"need 2 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        if self.n_train < 1 or self.n_test < 1:
            raise ValueError(f"n_train={self.n_train} and n_test={self.n_test} must be >= 1")


def make_rows(task: Task, n: int, rng: random.Random, lo: int, hi: int, exclude: set[str]) -> list:
    """`n` distinct rows whose inputs are not in `exclude` (the inputs get added to it)."""
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


PRESETS = {
    "cpu": {},  # the digit tasks only: what week 1's tiny model can learn
    "tiny": dict(n_train=200, n_test=16),
    # GPU profile: the digit tasks and SST-2 from the hub (Qwen2.5-0.5B-Instruct learns both)
    "gpu": dict(hub=(SST2,)),
}


def make_config(preset: str = "cpu", **overrides) -> DataConfig:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    return DataConfig(**{**PRESETS[preset], **overrides})


def write_task(out: Path, train: list[dict], test: list[dict]) -> dict[str, str]:
    return {
        "train": str(write_jsonl(out / "train.jsonl", train)),
        "test": str(write_jsonl(out / "test.jsonl", test)),
        "train_chat": str(write_jsonl(out / "train_chat.jsonl", [to_chat(r) for r in train])),
    }


def main(cfg: DataConfig) -> dict:
    from common.hub import is_offline

    out = run_dir("week3", cfg.out_name)
    rng = random.Random(cfg.seed)
    files: dict[str, dict[str, str]] = {}
    for name in cfg.tasks:
        task = TASKS[name]
        seen: set[str] = set()
        test = make_rows(task, cfg.n_test, rng, cfg.min_len, cfg.max_len, seen)
        train = make_rows(task, cfg.n_train, rng, cfg.min_len, cfg.max_len, seen)
        files[name] = write_task(out / name, train, test)
        log.info("%s: %d train, %d test rows; e.g. %s", name, len(train), len(test), test[0])
    offline = is_offline(cfg.offline)
    for spec in cfg.hub:
        train = load_hub_rows(spec, spec.train_split, cfg.hub_n_train, cfg.seed, offline)
        test = load_hub_rows(spec, spec.test_split, cfg.hub_n_test, cfg.seed, offline)
        files[spec.task] = write_task(out / spec.task, train, test)
        log.info("%s (%s): %d train, %d test rows", spec.task, spec.path, len(train), len(test))
    results = {"config": asdict(cfg), "files": files}
    write_results(out / "results.json", results)
    return results


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    d = DataConfig()
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS), help="gpu: + SST-2")
    p.add_argument("--tasks", nargs="+", default=None, choices=sorted(TASKS))
    p.add_argument("--n-train", type=int, default=None, help=f"default {d.n_train}")
    p.add_argument("--n-test", type=int, default=None, help=f"default {d.n_test}")
    p.add_argument("--min-len", type=int, default=None, help=f"default {d.min_len}")
    p.add_argument("--max-len", type=int, default=None, help=f"default {d.max_len}")
    p.add_argument("--seed", type=int, default=None, help=f"default {d.seed}")
    p.add_argument("--out-name", default=None, help=f"default {d.out_name}")
    p.add_argument("--hub-n-train", type=int, default=None, help=f"default {d.hub_n_train}")
    p.add_argument("--hub-n-test", type=int, default=None, help=f"default {d.hub_n_test}")
    p.add_argument("--offline", action="store_true", default=None, help="hub cache only")
    a = vars(p.parse_args())
    preset = a.pop("preset")
    main(make_config(preset, **{k: v for k, v in a.items() if v is not None}))
