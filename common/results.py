"""Results are files: one logger format, atomic JSON writes, a JSONL metrics log.

Every run writes `runs/<week>/<run-name>/results.json`; the portfolio report reads only these.
Set IE_RUNS_DIR to put `runs/` somewhere else (the tests do).
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent

FILE_MODE = 0o644  # results, reports, metrics: readable by everyone, writable by the owner

_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s | %(message)s"


def get_logger(name: str) -> logging.Logger:
    """A logger with the project's one format, printing to stderr (so stdout stays clean)."""
    logger = logging.getLogger(name)
    if not logging.getLogger().handlers and not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%H:%M:%S"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def runs_root() -> Path:
    return Path(os.environ.get("IE_RUNS_DIR") or REPO_ROOT / "runs")  # unset or empty: runs/


def run_dir(week: str, name: str) -> Path:
    """`runs/<week>/<name>/`, created if missing."""
    for part, label in ((week, "week"), (name, "run name")):
        if not part or "/" in part or part in (".", ".."):
            raise ValueError(f"invalid {label} {part!r}: use a plain folder name like 'mnist-cnn'")
    path = runs_root() / week / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: store them as null so every reader can parse the file."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over `path`.

    A crash at any point leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), FILE_MODE)  # mkstemp makes 0600: results are for reading
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json_atomic(path: Path | str, obj: Any) -> Path:
    """Serialize `obj` first (so a serialization error never touches the file), then write."""
    text = json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))), indent=2)
    return atomic_write_bytes(path, (text + "\n").encode())


def read_json(path: Path | str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"results file {path} does not exist")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"results file {path} is not valid JSON ({e}); delete it and rerun") from e


def with_environment(results: dict) -> dict:
    """`results` with a complete "environment" (machine + provenance), adding what is missing.

    A writer that recorded `common.timing.environment()` itself (with its device or the
    server's version) keeps its values; one that recorded nothing, or only part, gets the rest.
    """
    from common.provenance import PROVENANCE_KEYS  # torch-free
    from common.timing import environment  # imports torch: only when a result is written

    env = results.get("environment")
    if isinstance(env, dict) and all(k in env for k in PROVENANCE_KEYS):
        return results
    env = env if isinstance(env, dict) else {}
    return {**results, "environment": {**environment(), **env}}


def write_results(path: Path | str, results: dict) -> Path:
    """Write a results.json (atomically) that carries the environment and provenance.

    Every results.json of the project goes through here or `save_results`.
    """
    return write_json_atomic(path, with_environment(results))


def save_results(week: str, name: str, results: dict) -> Path:
    """Write `runs/<week>/<name>/results.json` (with provenance) and return its path."""
    return write_results(run_dir(week, name) / "results.json", results)


class MetricsLogger:
    """Append one JSON object per line (training curves); `read()` loads them back."""

    def __init__(self, path: Path | str, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not append and self.path.exists():
            self.path.unlink()

    def log(self, **metrics: Any) -> None:
        line = json.dumps(_clean(metrics), default=_json_default)
        with open(self.path, "a") as f:
            f.write(line + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def truncate_after(self, key: str, value: float) -> None:
        """Drop rows with row[key] > value: on resume, forget what the crashed run logged later."""
        rows = [r for r in self.read() if r.get(key, -math.inf) <= value]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_bytes(self.path, text.encode())
