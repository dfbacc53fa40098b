"""A sweep's cells: every server setting × every load, where each writes, and whether it is done.

A cell's identity is a hash of everything that decides its numbers (engine, model, server
flags, the bench settings of its load): change any and the cell is stale, so a rerun measures
it again; rename a server or a load and it is not. A cell is done only when its results.json
carries its current hash and completed at least one request.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from common import hub
from common.results import REPO_ROOT, read_json, runs_root
from week2_serving.harness.sweep_config import SweepConfig, load_fields


@dataclass
class Cell:
    """One server setting × one load: what runs, where its files go, and its identity."""

    server: str
    load: str
    engine: str
    model: str  # as the config names it (resolve_model finds it)
    args: list[str]
    fields: dict  # the load's own fields
    params: dict  # what the bench gets: the bench defaults, then the load's fields
    folder: Path
    hash: str


def sweep_dir(cfg: SweepConfig) -> Path:
    return runs_root() / "week2" / f"sweep-{cfg.name}"


def model_path(model: str) -> str:
    """runs/... in this run's runs folder (IE_RUNS_DIR, default runs/), another relative path
    under the repository if it exists there; anything else (a hub id) unchanged. No download."""
    if model.startswith("runs/"):
        return str(runs_root() / model.removeprefix("runs/"))
    if not Path(model).is_absolute() and (REPO_ROOT / model).exists():
        return str(REPO_ROOT / model)
    return model


def resolve_model(model: str) -> str:
    """The model's local folder: `model_path`'s, or a hub id's snapshot, downloaded unless
    offline (--offline / HF_HUB_OFFLINE); see common.hub.resolve_model."""
    return str(hub.resolve_model(model_path(model)))


def cell_hash(cfg: SweepConfig, engine: str, model: str, args: list[str], params: dict) -> str:
    """A short stable hash of everything that decides a cell's numbers (not its names)."""
    identity = {
        "engine": engine,
        "model": model,
        "args": args,
        "bench": params,
        "served_model_name": cfg.served_model_name,
        "max_model_len": cfg.max_model_len,
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[
        :12
    ]


def plan(cfg: SweepConfig) -> list[Cell]:
    """Every cell in run order: server by server, each with its loads in the config's order."""
    cells = []
    for server in cfg.servers:
        wanted = server.get("loads")  # a server setting may run only some of the loads
        engine = server.get("engine", cfg.engine)  # ... or swap the engine
        model = server.get("model", cfg.model)  # ... or the model
        args = list(server.get("args", []))
        for load in cfg.loads:
            if wanted is not None and load["name"] not in wanted:
                continue
            params = {**cfg.bench, **load_fields(load)}
            cells.append(
                Cell(
                    server["name"],
                    load["name"],
                    engine,
                    model,
                    args,
                    load_fields(load),
                    params,
                    sweep_dir(cfg) / server["name"] / load["name"],
                    cell_hash(cfg, engine, model, args, params),
                )
            )
    return cells


def by_server(cells: list[Cell]) -> dict[str, list[Cell]]:
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.server, []).append(cell)
    return groups


def read_results(path: Path) -> dict | None:
    try:
        return read_json(path) if path.is_file() else None
    except ValueError:  # not JSON: not a result
        return None


def cell_status(cell: Cell) -> str:
    """done; stale (results of another config); failed (error.json, or 0 completed); pending."""
    res = read_results(cell.folder / "results.json")
    current = res is not None and res.get("cell_hash") == cell.hash
    if current and (res.get("completed") or 0) > 0:
        return "done"
    if (cell.folder / "error.json").is_file():
        return "failed"
    if res is not None:
        return "failed" if current else "stale"
    return "pending"
