"""The tensors of an HF folder, by name: one `model.safetensors`, or shards listed in
`model.safetensors.index.json` (`weight_map`: tensor name -> shard file).

Tensors are read on demand (safetensors maps the file; only what is asked for is copied), so a
loader can fuse Q, K and V without first holding a second copy of the whole model.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class Checkpoint:
    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.weight_map = self._weight_map()  # tensor name -> file name in the folder
        self._open: dict[str, object] = {}  # file name -> safe_open handle

    def _weight_map(self) -> dict[str, str]:
        from safetensors import safe_open

        index = self.folder / INDEX
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise ValueError(f"{index}: no 'weight_map' of tensor name -> shard file")
            missing = sorted({f for f in weight_map.values() if not (self.folder / f).is_file()})
            if missing:
                raise FileNotFoundError(f"{index} lists shards that are not there: {missing}")
            return dict(weight_map)
        single = self.folder / SINGLE
        if not single.is_file():
            found = sorted(p.name for p in self.folder.iterdir() if p.is_file())
            raise FileNotFoundError(
                f"{self.folder}: no {SINGLE} or {INDEX} (files here: {found}); the engine reads "
                f"safetensors weights: re-save the model with save_pretrained (safetensors)"
            )
        with safe_open(str(single), framework="pt") as f:
            return {name: SINGLE for name in f.keys()}  # noqa: SIM118 (a safe_open handle, not a dict)

    def names(self) -> set[str]:
        return set(self.weight_map)

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str) -> torch.Tensor:
        """The tensor `name` as stored (its own dtype, on the CPU)."""
        from safetensors import safe_open

        file = self.weight_map.get(name)
        if file is None:
            raise KeyError(
                f"{self.folder}: the checkpoint has no tensor {name!r} "
                f"({len(self.weight_map)} tensors, e.g. {sorted(self.weight_map)[:3]})"
            )
        if file not in self._open:
            self._open[file] = safe_open(str(self.folder / file), framework="pt")
        return self._open[file].get_tensor(name)
