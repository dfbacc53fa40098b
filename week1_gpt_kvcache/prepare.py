"""Get a text corpus, train a tokenizer on it, and write the token ids for training.

    python -m week1_gpt_kvcache.prepare                       # BPE, vocab 2048, the pinned pydoc corpus
    python -m week1_gpt_kvcache.prepare --tokenizer char
    python -m week1_gpt_kvcache.prepare --text-file my.txt

    python -m week1_gpt_kvcache.prepare --source shakespeare  # opt in: download Tiny Shakespeare

Sources (see `corpus.py`): `pydoc` (default) is the English documentation CPython ships
(`pydoc_data.topics`), offline and pinned; `shakespeare` and `auto` (download, else pydoc) are
opt-ins whose numbers differ from the README's.
Writes runs/week1/data-<tokenizer>/: tokenizer.json, train.bin, val.bin (uint16 ids; 90/10
split), corpus.txt and meta.json.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from common.cli import parse
from common.results import get_logger, write_json_atomic
from week1_gpt_kvcache.corpus import (
    DEFAULT_SOURCE,
    SOURCES,
    Source,
    TokenizerKind,
    data_dir,
    load_corpus,
)
from week1_gpt_kvcache.tokenizer import BPETokenizer, CharTokenizer

log = get_logger("week1.prepare")


@dataclass
class PrepareConfig:
    """Get a corpus, train a tokenizer on it and write the token ids."""

    tokenizer: TokenizerKind = "bpe"  # byte-level BPE, or one token per character
    vocab_size: int = 2048  # BPE vocabulary size (char: the corpus's characters)
    source: Source = DEFAULT_SOURCE  # pydoc: offline, pinned; opt-ins: shakespeare | auto
    text_file: str | None = None  # train on this UTF-8 text file instead
    out_dir: str | None = None  # None = runs/week1/data-<tokenizer>
    val_fraction: float = 0.1  # the end of the corpus held out for validation

    def __post_init__(self) -> None:
        if self.tokenizer not in ("bpe", "char"):
            raise ValueError(f"tokenizer={self.tokenizer!r}: use bpe or char")
        if self.source not in SOURCES:
            raise ValueError(f"source={self.source!r}: use one of {', '.join(SOURCES)}")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction={self.val_fraction} must be in (0, 0.5)")


def main(cfg: PrepareConfig) -> dict:
    out = data_dir(cfg.tokenizer, cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text, source = load_corpus(cfg.source, cfg.text_file)
    split = int(len(text) * (1 - cfg.val_fraction))
    train_text, val_text = text[:split], text[split:]
    if cfg.tokenizer == "char":
        tok = CharTokenizer.train(text)  # every character of the corpus, so val encodes too
    else:  # train the merges on the training part only, in paragraph-sized pieces
        tok = BPETokenizer.train(train_text.split("\n\n"), cfg.vocab_size)
    tok.save(out / "tokenizer.json")
    ids = {}
    for name, part in (("train", train_text), ("val", val_text)):
        arr = np.array(tok.encode(part), dtype=np.uint16)
        arr.tofile(out / f"{name}.bin")
        ids[name] = len(arr)
    (out / "corpus.txt").write_text(text, encoding="utf-8")
    meta = {
        "source": source,
        "tokenizer": cfg.tokenizer,
        "vocab_size": tok.vocab_size,
        "chars": len(text),
        "train_tokens": ids["train"],
        "val_tokens": ids["val"],
        "chars_per_token": round(len(text) / (ids["train"] + ids["val"]), 3),
        "config": asdict(cfg),
    }
    write_json_atomic(out / "meta.json", meta)
    log.info(
        "corpus %s: %d chars -> %d train / %d val tokens (%s, vocab %d) in %s",
        source,
        len(text),
        ids["train"],
        ids["val"],
        cfg.tokenizer,
        tok.vocab_size,
        out,
    )
    return meta


if __name__ == "__main__":
    main(parse(PrepareConfig, description=__doc__))
