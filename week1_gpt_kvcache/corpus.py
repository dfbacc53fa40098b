"""The text corpus and its token files: where they come from, where they live, how to batch them.

`prepare` writes runs/week1/data-<tokenizer>/ (tokenizer.json, train.bin, val.bin as uint16 ids,
corpus.txt, meta.json); training and the benchmark read it back with `load_tokens` and cut
random windows from it with `get_batch`.

Sources: `pydoc` (the default) is the English documentation that CPython ships
(`pydoc_data.topics`): pinned by the Python version, no network, so every number in the README
reproduces. Opt in to another corpus: `shakespeare` downloads Tiny Shakespeare (as nanoGPT
does) and fails without a network; `auto` tries that download and falls back to `pydoc`.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch

from common.results import get_logger, runs_root

log = get_logger("week1.corpus")

SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
Source = Literal["pydoc", "shakespeare", "auto"]
DEFAULT_SOURCE: Source = "pydoc"  # offline and pinned: the corpus every README number uses
SOURCES: tuple[str, ...] = get_args(Source)
TokenizerKind = Literal["bpe", "char"]


def data_dir(tokenizer: str, override: Path | str | None = None) -> Path:
    """Where `prepare` writes (and training reads) the data of one tokenizer."""
    return Path(override) if override else runs_root() / "week1" / f"data-{tokenizer}"


def pydoc_corpus() -> str:
    """CPython's own English help texts (the `help('topics')` pages): always installed."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n"


def download_shakespeare(timeout_s: float = 15.0) -> str:
    with urllib.request.urlopen(SHAKESPEARE_URL, timeout=timeout_s) as r:
        return r.read().decode("utf-8")


def read_text_file(text_file: Path | str) -> str:
    """A user's corpus: UTF-8, at least 1,000 characters."""
    path = Path(text_file)
    if not path.is_file():
        raise FileNotFoundError(f"--text-file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    if len(text) < 1000:
        raise ValueError(
            f"--text-file {path} has only {len(text)} characters; give it at least 1,000"
        )
    return text


def load_corpus(
    source: str = DEFAULT_SOURCE, text_file: Path | str | None = None
) -> tuple[str, str]:
    """(text, source name): the file if one is given, else the named source.

    Only `shakespeare` and `auto` touch the network; the default never does.
    """
    if text_file is not None:
        return read_text_file(text_file), f"file:{text_file}"
    if source not in SOURCES:
        raise ValueError(f"unknown corpus source {source!r}; use one of {', '.join(SOURCES)}")
    if source in ("auto", "shakespeare"):
        try:
            return download_shakespeare(), "tinyshakespeare"
        except Exception as e:
            if source == "shakespeare":
                raise
            log.warning(
                "Tiny Shakespeare download failed (%s); using CPython's pydoc topics offline",
                type(e).__name__,
            )
    return pydoc_corpus(), "pydoc_data.topics"


def load_tokens(folder: Path, split: str) -> torch.Tensor:
    """The token ids of one split ("train" or "val") as a 1-D int64 tensor."""
    path = folder / f"{split}.bin"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; run python -m week1_gpt_kvcache.prepare first"
        )
    return torch.from_numpy(np.fromfile(path, dtype=np.uint16).astype(np.int64))


def get_batch(tokens: torch.Tensor, seq_len: int, batch_size: int, gen: torch.Generator):
    """Random windows: x = tokens[i : i+T], y = tokens[i+1 : i+T+1]. Both (B, T)."""
    starts = torch.randint(len(tokens) - seq_len - 1, (batch_size,), generator=gen)
    x = torch.stack([tokens[s : s + seq_len] for s in starts])
    y = torch.stack([tokens[s + 1 : s + seq_len + 1] for s in starts])
    return x, y
