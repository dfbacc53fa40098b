"""Sweep the serving levers: every server setting × every load setting, resumable.

    python -m week2_serving.sweep week2_serving/configs/cpu.yaml     # ~10 min on 2 cores
    python -m week2_serving.report runs/week2/sweep-cpu              # the one-page report

The YAML names an engine and a model, `servers` (flags for the server, and optionally another
`model` such as a quantized variant: each one restarts the server),
`loads` (BenchConfig fields: concurrency, rate, workload) and `bench` defaults. Each cell
writes runs/week2/sweep-<name>/<server>/<load>/results.json; a rerun skips finished cells,
so an interrupted sweep resumes where it stopped. A server that fails to start is recorded
in its cells (error.json) and the sweep goes on.
"""

from __future__ import annotations

import argparse
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from common.procs import Terminated, sigterm_as_interrupt
from common.results import REPO_ROOT, get_logger, runs_root, write_json_atomic
from common.server import ServerError
from week2_serving import bench
from week2_serving.launch import ENGINES, launch

log = get_logger("week2.sweep")


@dataclass
class SweepConfig:
    name: str
    engine: str
    model: str
    servers: list[dict]
    loads: list[dict]
    bench: dict = field(default_factory=dict)
    served_model_name: str | None = None
    max_model_len: int | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise ValueError(f"engine {self.engine!r}: use one of {', '.join(ENGINES)}")
        for kind, items in (("servers", self.servers), ("loads", self.loads)):
            if not items:
                raise ValueError(f"the sweep needs at least one entry in {kind!r}")
            names = [i.get("name") for i in items]
            if None in names or len(set(names)) != len(names):
                raise ValueError(f"every entry of {kind!r} needs a unique 'name', got {names}")
        load_names = {load["name"] for load in self.loads}
        for server in self.servers:  # a server setting may name its own engine and loads
            unknown = set(server.get("loads") or []) - load_names
            if unknown:
                raise ValueError(f"server {server['name']!r} names unknown loads {sorted(unknown)}")
            if server.get("engine", self.engine) not in ENGINES:
                raise ValueError(
                    f"server {server['name']!r}: engine {server['engine']!r}: use one of "
                    f"{', '.join(ENGINES)}"
                )
        fields = set(bench.BenchConfig.__dataclass_fields__)
        for load in self.loads:
            bad = set(load) - fields - {"name"}
            if bad:
                raise ValueError(
                    f"load {load['name']!r} has unknown field(s) {sorted(bad)}; "
                    f"use BenchConfig fields such as max_concurrency, request_rate"
                )

    @classmethod
    def from_yaml(cls, path: Path | str) -> SweepConfig:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"sweep config {path} does not exist")
        data = yaml.safe_load(path.read_text())
        try:
            return cls(**data)
        except TypeError as e:
            raise ValueError(f"{path}: {e}") from e


def sweep_dir(cfg: SweepConfig) -> Path:
    return runs_root() / "week2" / f"sweep-{cfg.name}"


def resolve_model(model: str) -> str:
    """A path relative to the repository (runs/week1/hf-model) or a hub id, unchanged."""
    return (
        str(REPO_ROOT / model)
        if not Path(model).is_absolute() and (REPO_ROOT / model).exists()
        else model
    )


def cell_done(path: Path) -> bool:
    return (path / "results.json").is_file()


def run_sweep(cfg: SweepConfig, launcher: Callable = launch, runner: Callable = bench.main) -> Path:
    out = sweep_dir(cfg)
    write_json_atomic(out / "sweep.json", {"config": cfg.__dict__})
    for server in cfg.servers:
        wanted = server.get("loads")  # a server setting may run only some of the loads
        loads = [load for load in cfg.loads if wanted is None or load["name"] in wanted]
        pending = [load for load in loads if not cell_done(out / server["name"] / load["name"])]
        if not pending:
            log.info("server %s: all %d cells done, skipping", server["name"], len(loads))
            continue
        model = resolve_model(server.get("model", cfg.model))  # a server setting may swap the model
        engine = server.get("engine", cfg.engine)  # ... or the engine (ours vs vLLM in one sweep)
        try:
            with launcher(
                engine,
                model,
                extra=server.get("args", []),
                max_model_len=cfg.max_model_len,
                log_dir=out / server["name"],
                served_name=cfg.served_model_name,
            ) as srv:
                info = {
                    "engine": engine,
                    "model": model,
                    "command": srv.cmd,
                    "args": server.get("args", []),
                }
                for load in pending:
                    cell = out / server["name"] / load["name"]
                    log.info("cell %s / %s", server["name"], load["name"])
                    params = {**cfg.bench, **{k: v for k, v in load.items() if k != "name"}}
                    res = runner(
                        bench.BenchConfig(
                            base_url=srv.url,
                            model=cfg.served_model_name,
                            tokenizer=model,
                            save=False,
                            server_info=info,
                            **params,
                        )
                    )
                    res.update(server_name=server["name"], load_name=load["name"])
                    write_json_atomic(cell / "results.json", res)
        except ServerError as e:
            log.error("server %s failed: %s", server["name"], str(e).splitlines()[0])
            for load in pending:
                write_json_atomic(
                    out / server["name"] / load["name"] / "error.json",
                    {"server": server, "error": str(e)},
                )
    log.info("sweep %s done: %s", cfg.name, out)
    return out


def main(argv: list[str] | None = None) -> Path:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("config", type=Path, help="sweep YAML, e.g. week2_serving/configs/cpu.yaml")
    a = p.parse_args(argv)
    with sigterm_as_interrupt():  # SIGTERM unwinds like Ctrl-C: the running server is stopped
        try:
            return run_sweep(SweepConfig.from_yaml(a.config))
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM raised as Terminated
            sig = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
            log.warning("interrupted by %s; finished cells are kept: rerun to resume", sig.name)
            raise SystemExit(128 + sig) from None


if __name__ == "__main__":
    main()
