"""Training checkpoints that survive a crash and load safely.

Saving goes through a temp file and a rename (see `atomic_write_bytes`), so a run killed while
saving keeps its previous checkpoint. Loading uses `weights_only=True`: a checkpoint is data,
never code to execute.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from common.results import atomic_write_bytes


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or from a different model."""


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> Path:
    """Atomically write `state` (tensors, state_dicts, plain Python values) to `path`."""
    buf = io.BytesIO()
    torch.save(state, buf)
    return atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by `save_checkpoint`, with errors that name the path."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(
            f"checkpoint {path} does not exist; train first or pass the right --checkpoint/--resume path"
        )
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder; pass the checkpoint file inside it")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - random bytes can make the unpickler raise anything
        raise CheckpointError(
            f"checkpoint {path} is corrupted or not a torch checkpoint ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); delete it and train again"
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state
