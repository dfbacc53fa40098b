"""A sweep's YAML as a validated dataclass: every problem of a config, not only the first.

    cfg = SweepConfig.from_yaml("week2_serving/harness/configs/cpu.yaml")

A config names an `engine` and a `model`, the `servers` (each with a unique `name`, its `args`,
and optionally its own `model`, `engine` and the `loads` it runs), the `loads` (BenchConfig
fields) and `bench` defaults for every load. Typos are errors: an unknown key anywhere would
otherwise be silently ignored and the sweep would measure something else than intended.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from pathlib import Path

import yaml

from week2_serving.harness.bench_config import BenchConfig
from week2_serving.harness.launch import ENGINES

SERVER_KEYS = ("name", "args", "model", "engine", "loads")
SET_BY_SWEEP = ("base_url", "model", "tokenizer", "save", "server_info")  # not load fields


class ConfigError(ValueError):
    """A sweep config that cannot run; `problems` lists every reason, not only the first."""

    def __init__(self, where: str, problems: list[str]):
        self.problems = problems
        super().__init__(f"{where}:\n- " + "\n- ".join(problems))


@dataclass
class SweepConfig:
    name: str  # results go to runs/week2/sweep-<name>
    engine: str  # vllm | sglang | engine (a server entry may name another)
    model: str  # a folder (runs/... or a path) or a hub id (org/name)
    servers: list[dict]  # {name, args, [model], [engine], [loads]}: one server start each
    loads: list[dict]  # {name, BenchConfig fields...}
    bench: dict = field(default_factory=dict)  # BenchConfig defaults for every load
    served_model_name: str | None = None
    max_model_len: int | None = None
    # at most this many servers started side by side (each measured alone, the others idle),
    # fewer when free memory is short (common.server.servers_at_once); None: up to 3
    servers_at_once: int | None = None

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise ConfigError(f"sweep config {self.name!r}", problems)

    @classmethod
    def from_yaml(cls, path: Path | str) -> SweepConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sweep config {path} does not exist")
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, dict):
            raise ConfigError(str(path), [f"expected a mapping of settings, got {data!r}"])
        fields = cls.__dataclass_fields__
        required = [k for k, f in fields.items() if f.default is f.default_factory is MISSING]
        problems = [
            f"unknown key {k!r}; a sweep config takes {', '.join(fields)}"
            for k in data
            if k not in fields
        ]
        missing = [k for k in required if k not in data]
        problems += [f"missing key {k!r} (required: {', '.join(required)})" for k in missing]
        cfg = None
        if not missing:
            try:
                cfg = cls(**{k: v for k, v in data.items() if k in fields})
            except ConfigError as e:
                problems += e.problems
        if problems:
            raise ConfigError(str(path), problems)
        return cfg


def config_problems(cfg: SweepConfig) -> list[str]:
    """Every reason `cfg` cannot run, whatever the machine."""
    problems = []
    if cfg.engine not in ENGINES:
        problems.append(f"engine {cfg.engine!r}: use one of {', '.join(ENGINES)}")
    at_once = cfg.servers_at_once
    if at_once is not None and (type(at_once) is not int or not 1 <= at_once <= 8):
        problems.append(
            f"servers_at_once={at_once!r}: use an integer from 1 to 8 (1: one server at a time), "
            "or leave it out to decide from free memory"
        )
    for kind, items in (("servers", cfg.servers), ("loads", cfg.loads)):
        if not isinstance(items, list) or not items:
            problems.append(f"the sweep needs at least one entry in {kind!r}")
        elif not all(isinstance(i, dict) for i in items):
            problems.append(f"every entry of {kind!r} must be a mapping with a 'name'")
        else:
            names = [i.get("name") for i in items]
            if None in names or len(set(names)) != len(names):
                problems.append(f"every entry of {kind!r} needs a unique 'name', got {names}")
    if problems:  # the checks below read the entries
        return problems
    load_names = [load["name"] for load in cfg.loads]
    for server in cfg.servers:
        problems += server_problems(server, load_names)
    fields = set(BenchConfig.__dataclass_fields__) - set(SET_BY_SWEEP)
    for what, values in [("bench", cfg.bench)] + [(f"load {x['name']!r}", x) for x in cfg.loads]:
        bad = sorted(set(values) - fields - {"name"})
        if bad:
            problems.append(
                f"{what} has unknown field(s) {bad}; use BenchConfig fields such as "
                f"max_concurrency, request_rate (not {', '.join(SET_BY_SWEEP)}: the sweep sets those)"
            )
    if problems:
        return problems
    for load in cfg.loads:  # the values themselves (num_prompts >= 1, a known dataset_name, ...)
        try:
            BenchConfig(**{**cfg.bench, **load_fields(load)})
        except (TypeError, ValueError) as e:
            problems.append(f"load {load['name']!r}: {e}")
    return problems


def server_problems(server: dict, load_names: list[str]) -> list[str]:
    """What is wrong with one entry of `servers` (a typo'd key would otherwise be ignored)."""
    name, problems = server["name"], []
    unknown = [k for k in server if k not in SERVER_KEYS]
    if unknown:
        problems.append(
            f"server {name!r} has unknown key(s) {unknown}; use {', '.join(SERVER_KEYS)}"
        )
    args = server.get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        problems.append(
            f"server {name!r}: args must be a list of strings, got {args!r} "
            '(quote numbers: ["--max-num-seqs", "4"])'
        )
    missing = sorted(set(server.get("loads") or []) - set(load_names))
    if missing:
        problems.append(f"server {name!r} names unknown loads {missing}")
    if server.get("engine", ENGINES[0]) not in ENGINES:
        problems.append(
            f"server {name!r}: engine {server['engine']!r}: use one of {', '.join(ENGINES)}"
        )
    return problems


def load_fields(load: dict) -> dict:
    return {k: v for k, v in load.items() if k != "name"}
