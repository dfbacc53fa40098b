"""What the quantize orchestrator and its workers share: calibration windows, the worker command
line, and the "done" marker a worker writes into its variant folder.

The workers (awq_worker, w8a8_worker) run in other venvs (.venvs/vllm, .venvs/quant) that hold
torch, transformers and their quantization library but not this repository's other
dependencies, so this module imports only the standard library, numpy and three small stdlib-only
modules of `common` (cli, hub, results). tests/test_week2_quant.py checks what a worker loads.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.cli import parse
from common.hub import resolve_model
from common.results import write_json_atomic

DONE_FILE = "quantize.json"  # written last by a worker: the variant is complete
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


# ---- calibration and evaluation text: windows of the week 1 token splits ----


def read_split(data_dir: Path, split: str) -> np.ndarray:
    """The token ids of `split`.bin (uint16, as week 1's prepare writes them)."""
    path = Path(data_dir) / f"{split}.bin"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: the week 1 token splits are made by "
            "`python -m week1_gpt_kvcache.prepare` (make week1)"
        )
    return np.fromfile(path, dtype=np.uint16).astype(np.int64)


def token_windows(
    data_dir: Path | str, split: str, n: int, length: int, seed: int | None = None
) -> list[list[int]]:
    """`n` windows of `length` token ids from `split`.bin, without overlap.

    seed=None: consecutive windows from the start (evaluation: the same texts every time);
    a seed: windows at random non-overlapping offsets (calibration).
    """
    ids = read_split(Path(data_dir), split)
    available = len(ids) // length
    if available < 1:
        raise ValueError(f"{split}.bin has {len(ids)} tokens, fewer than one window of {length}")
    n = min(n, available)
    starts = np.arange(available) * length
    if seed is not None:
        starts = np.sort(np.random.default_rng(seed).choice(starts, size=n, replace=False))
    return [ids[s : s + length].tolist() for s in starts[:n]]


# ---- the worker command line ----


@dataclass
class WorkerArgs:
    """What every worker is told by the orchestrator (python -m week2_serving.quant.quantize)."""

    model: str  # fp32 HF folder or hub id (a hub id becomes its local snapshot folder)
    out: str  # the variant folder to write
    data: str  # folder with train.bin (calibration windows come from the train split)
    num_calib: int = 32  # calibration windows
    calib_len: int = 256  # tokens per calibration window
    group_size: int | None = None  # weight group size, for the schemes that group weights
    seed: int = 0  # picks the calibration windows
    offline: bool | None = None  # True: a hub id must be cached; None: HF_HUB_OFFLINE decides

    def __post_init__(self) -> None:
        if self.num_calib < 1 or self.calib_len < 2:
            raise ValueError(
                f"num_calib={self.num_calib}, calib_len={self.calib_len}: need >= 1 window "
                "of >= 2 tokens"
            )


def worker_args(argv: list[str] | None, description: str) -> WorkerArgs:
    """Parse a worker's command line; `--model` may be a hub id, returned as its local folder."""
    args = parse(WorkerArgs, argv, description=description)
    args.model = str(resolve_model(args.model, args.offline))
    return args


# ---- the finished variant folder ----


def copy_tokenizer_files(src: Path | str, dst: Path | str) -> None:
    """Tokenizer, chat template and generation config, unchanged, so the variant is served
    exactly like the fp32 model (autoawq rewrites generation_config.json with do_sample)."""
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            shutil.copy2(Path(src) / name, Path(dst) / name)


def folder_bytes(folder: Path | str) -> dict:
    """Bytes of the weight files (*.safetensors) and of everything in `folder`."""
    folder = Path(folder)
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    return {"weight_bytes": weights, "total_bytes": total}


def source_signature(model: Path | str) -> list[list]:
    """Name, size and mtime of the source weights: a retrained week 1 model changes it."""
    files = sorted(Path(model).glob("*.safetensors"))
    return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]


def finish_variant(out: Path, src: Path, info: dict) -> None:
    """Copy the tokenizer files and write the done marker (last, so a crash leaves none)."""
    copy_tokenizer_files(src, out)
    write_json_atomic(
        out / DONE_FILE, {**info, **folder_bytes(out), "source": source_signature(src)}
    )


def is_done(folder: Path, model: Path | None = None) -> bool:
    """The worker finished (and, given `model`, from the same source weights as now)."""
    if not ((folder / DONE_FILE).is_file() and (folder / "config.json").is_file()):
        return False
    if model is None:
        return True
    return json.loads((folder / DONE_FILE).read_text()).get("source") == source_signature(model)
