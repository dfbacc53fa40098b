"""The week's tasks, in one table: adding a task is one entry in `TASKS` (this file).

A task says how its rows are made (generated from random inputs, or read from a public dataset
on the hub), how its prompt looks, which binary checks the scorer runs beside exact match, and
how many SFT steps it needs by default. `data`, `sft`, `dpo`, `evaluate` and `serve` all read
this table; the error for an unknown name lists its keys.

Why digit tasks: week 1's model is tiny (3.5M parameters) and its BPE was trained on Python
docs. A bare digit string like "48193" tokenizes one digit per token, so a task over digit
strings is a clean per-token problem the base model has never seen and a rank-8 LoRA can learn.
The prompt "reverse:48193=" keeps ':' and '=' as their own tokens, so the tokens of
prompt+completion are exactly the prompt's tokens followed by the completion's.

Each task also has a *plausible wrong answer* (`wrong`), the mistake a half-trained model makes;
DPO uses it as the rejected completion. A hub task's wrong answer is the other label.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

Checks = Callable[[str, str], dict[str, bool]]  # (input, normalized answer) -> named verdicts


# ---- generated tasks: input string -> exact answer, and a plausible wrong answer -------------


def _bump_one_digit(y: str, rng: random.Random) -> str:
    """Fallback mistake when the task's own one equals the answer (e.g. '1111')."""
    i = rng.randrange(len(y))
    return y[:i] + str((int(y[i]) + 1) % 10) + y[i + 1 :]


def _reverse(x: str) -> str:
    return x[::-1]


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


# ---- the scorer's checks: *how* a wrong answer is wrong --------------------------------------


def _digit_checks(x: str, y: str) -> dict[str, bool]:
    return {"is_digits": y.isdigit()}


def _permutation_checks(x: str, y: str) -> dict[str, bool]:
    return {**_digit_checks(x, y), "same_digits": sorted(y) == sorted(x)}


def _sort_checks(x: str, y: str) -> dict[str, bool]:
    return {
        **_permutation_checks(x, y),
        "ascending": list(y) == sorted(y),
        "descending": list(y) == sorted(y, reverse=True) and y != "".join(sorted(y)),
    }


def _add_checks(x: str, y: str) -> dict[str, bool]:
    return {**_digit_checks(x, y), "right_length": len(y) == len(_add(x))}


# ---- a public dataset from the hub, as a task with exact answers ----------------------------


@dataclass(frozen=True)
class HubDataset:
    """A labelled text dataset turned into prompt/completion rows (answer = the label's word).

    Its id, splits and columns live here, so a copy with the same columns in local JSON/Parquet
    files loads the same way (`path="json"`, `data_files=`)."""

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

    def checks(self, x: str, y: str) -> dict[str, bool]:
        """A label task's check: was the answer one of the labels at all?"""
        return {"valid_label": y in self.labels}


# SST-2 (GLUE, stanfordnlp/sst2): movie-review sentences labelled negative/positive; the test
# split's labels are hidden, so the validation split is the held-out set.
SST2 = HubDataset(
    task="sst2",
    path="stanfordnlp/sst2",
    text_column="sentence",
    label_column="label",
    labels=("negative", "positive"),
)


# ---- the registry ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One task: where its rows come from, its prompt, its checks, its default SFT steps."""

    name: str
    checks: Checks  # binary checks beside exact match, on the normalized answer
    form_check: str  # the check a "near miss" passes: the right kind of answer, but wrong
    sft_steps: int = 1200  # SFT steps to pass 90% exact match (batch 32, lr 2e-3)
    default: bool = True  # written by `data` without --tasks
    answer: Callable[[str], str] | None = None  # generated: input -> the exact answer
    wrong: Callable[[str, random.Random], str] | None = None  # input -> DPO's rejected answer
    sample: Callable[[random.Random, int, int], str] | None = None  # (rng, min, max) -> input
    hub: HubDataset | None = None  # or: rows from a labelled public dataset

    def __post_init__(self) -> None:
        generated = (self.answer, self.wrong, self.sample)
        if self.hub is None and None in generated:
            raise ValueError(f"task {self.name!r}: give answer, wrong and sample, or a hub dataset")
        if self.hub is not None and self.hub.task != self.name:
            raise ValueError(f"task {self.name!r}: its hub dataset is named {self.hub.task!r}")

    @property
    def generated(self) -> bool:
        """True for tasks whose inputs are sampled and answers computed (not a dataset)."""
        return self.hub is None

    def prompt(self, x: str) -> str:
        return self.hub.template.format(text=x) if self.hub else f"{self.name}:{x}="


_DIGITS = dict(sample=_digits)  # inputs: random digit strings of min_len..max_len digits

TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task(
            "reverse",
            _permutation_checks,
            form_check="same_digits",
            sft_steps=1200,  # the slowest of the three to learn
            answer=_reverse,
            wrong=_reverse_wrong,
            **_DIGITS,
        ),
        Task(
            "sort",
            _sort_checks,
            form_check="same_digits",
            sft_steps=600,
            answer=_sort,
            wrong=_sort_wrong,
            **_DIGITS,
        ),
        Task(
            "shift",  # each digit + 1 (mod 10)
            _digit_checks,
            form_check="is_digits",
            sft_steps=800,
            answer=_shift,
            wrong=_shift_wrong,
            **_DIGITS,
        ),
        Task(
            "add",  # harder (carries): not in the default set
            _add_checks,
            form_check="right_length",
            default=False,
            answer=_add,
            wrong=_add_wrong,
            sample=_addends,
        ),
        Task(
            "sst2",  # the GPU profile's public dataset (data --preset gpu)
            SST2.checks,
            form_check="valid_label",
            default=False,
            hub=SST2,
        ),
    )
}


def known_tasks() -> list[str]:
    """Every task name a run may use."""
    return sorted(TASKS)


def get_task(name: str) -> Task:
    """The task called `name`; an unknown name is an error that lists the known ones."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {known_tasks()}")
    return TASKS[name]


def default_tasks() -> tuple[str, ...]:
    """The tasks `data` writes by default (the CPU profile's)."""
    return tuple(n for n, t in TASKS.items() if t.default)
