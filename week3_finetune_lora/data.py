"""Write every task's rows as JSONL for trl (prompt–completion and chat), seeded and disjoint.

    python -m week3_finetune_lora.data                       # runs/week3/data/<task>/{train,test}.jsonl
    python -m week3_finetune_lora.data --tasks reverse --n-train 2000 --n-test 200
    python -m week3_finetune_lora.data --tasks add --min-len 2 --max-len 2
    python -m week3_finetune_lora.data --preset gpu          # + SST-2 from the hub (`datasets`)

The tasks themselves (answers, wrong answers, prompts, checks) are the table in tasks.py; the
rows and their files in rows.py. A generated task (digits) gets `n_train` + `n_test` rows whose
inputs never repeat across the two splits; a hub task (SST-2 in the `gpu` preset) gets a seeded
sample of its dataset's train and held-out splits, in the same row format: prompt
"Review: <sentence>\\nSentiment:", completion " positive", rejected " negative".
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from common.cli import parse
from common.hub import is_offline
from common.results import get_logger, run_dir, write_results
from week3_finetune_lora.config import from_preset
from week3_finetune_lora.rows import load_hub_rows, make_rows, write_task
from week3_finetune_lora.tasks import TASKS, HubDataset, default_tasks, get_task

log = get_logger("week3.data")


@dataclass
class DataConfig:
    """Task rows for SFT, DPO and the held-out evals (tasks: see tasks.py)."""

    tasks: tuple[str, ...] = default_tasks()  # task names from tasks.TASKS
    n_train: int = 8000  # rows per generated task (4 digits: 10,000 possible inputs in all)
    n_test: int = 200  # held-out rows per generated task (inputs never seen in train)
    # digits per input (per addend for `add`); a fixed length keeps every answer digit at a
    # fixed distance from its source, which a tiny model learns much faster (see README)
    min_len: int = 4  # fewest digits per input
    max_len: int = 4  # most digits per input
    seed: int = 0  # the rows' random seed
    out_name: str = "data"  # runs/week3/<out_name>/
    hub_n_train: int | None = 4000  # rows per hub task (none = the whole split)
    hub_n_test: int | None = 500  # held-out rows per hub task (none = the whole split)
    offline: bool | None = (
        None  # read the local hub cache only; none: only if HF_HUB_OFFLINE is set
    )
    # more hub datasets written beside the tasks (e.g. a local copy of SST-2), in code only
    hub: tuple[HubDataset, ...] = field(default=(), metadata={"cli": False})

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        self.hub = tuple(self.hub)
        for name in self.tasks:
            get_task(name)  # an unknown name lists the known ones
        for spec in self.hub:
            if not isinstance(spec, HubDataset):
                raise ValueError(f"hub entries must be HubDataset, got {spec!r}")
            if spec.task in TASKS and TASKS[spec.task].generated:
                raise ValueError(
                    f"hub dataset {spec.task!r} clashes with a generated task; rename it"
                )
        for n in (self.hub_n_train, self.hub_n_test):
            if n is not None and n < 1:
                raise ValueError(
                    f"hub_n_train={self.hub_n_train}, hub_n_test={self.hub_n_test}: "
                    "each must be >= 1 or None (all)"
                )
        if not 2 <= self.min_len <= self.max_len:
            raise ValueError(f"need 2 <= min_len <= max_len, got {self.min_len}, {self.max_len}")
        if self.n_train < 1 or self.n_test < 1:
            raise ValueError(f"n_train={self.n_train} and n_test={self.n_test} must be >= 1")

    def hub_specs(self) -> list[HubDataset]:
        """Every hub dataset to write: the hub tasks named in `tasks`, then `hub`."""
        named = [TASKS[n].hub for n in self.tasks if not TASKS[n].generated]
        return [*named, *self.hub]


PRESETS = {
    "cpu": {},  # the default tasks only: what week 1's tiny model can learn
    "tiny": dict(n_train=200, n_test=16),
    # GPU profile: + SST-2 from the hub (Qwen2.5-0.5B-Instruct learns both)
    "gpu": dict(tasks=(*default_tasks(), "sst2")),
}


def make_config(preset: str = "cpu", **overrides) -> DataConfig:
    return from_preset(DataConfig, PRESETS, preset, **overrides)


def main(cfg: DataConfig) -> dict:
    out = run_dir("week3", cfg.out_name)
    rng = random.Random(cfg.seed)
    files: dict[str, dict[str, str]] = {}
    for task in (TASKS[n] for n in cfg.tasks if TASKS[n].generated):
        seen: set[str] = set()
        test = make_rows(task, cfg.n_test, rng, cfg.min_len, cfg.max_len, seen)
        train = make_rows(task, cfg.n_train, rng, cfg.min_len, cfg.max_len, seen)
        files[task.name] = write_task(out / task.name, train, test)
        log.info("%s: %d train, %d test rows; e.g. %s", task.name, len(train), len(test), test[0])
    offline = is_offline(cfg.offline)
    for spec in cfg.hub_specs():
        train = load_hub_rows(spec, spec.train_split, cfg.hub_n_train, cfg.seed, offline)
        test = load_hub_rows(spec, spec.test_split, cfg.hub_n_test, cfg.seed, offline)
        files[spec.task] = write_task(out / spec.task, train, test)
        log.info("%s (%s): %d train, %d test rows", spec.task, spec.path, len(train), len(test))
    results = {"config": asdict(cfg), "files": files}
    write_results(Path(out) / "results.json", results)
    return results


def parse_args(argv: list[str] | None = None) -> DataConfig:
    return parse(DataConfig, argv, presets=PRESETS, default_preset="cpu", description=__doc__)


if __name__ == "__main__":
    main(parse_args())
