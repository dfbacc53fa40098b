"""Get a text corpus, train a tokenizer on it, and write the token ids for training.

    python -m week1_gpt_kvcache.prepare                       # BPE, vocab 2048, auto source
    python -m week1_gpt_kvcache.prepare --tokenizer char
    python -m week1_gpt_kvcache.prepare --text-file my.txt

Sources: `auto` downloads Tiny Shakespeare (as nanoGPT does) and falls back, offline, to the
English documentation that CPython ships (`pydoc_data.topics`, ~465k characters).
Writes runs/week1/data-<tokenizer>/: tokenizer.json, train.bin, val.bin (uint16 ids; 90/10
split), corpus.txt and meta.json.
"""

from __future__ import annotations

import argparse
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from common.results import get_logger, runs_root, write_json_atomic
from week1_gpt_kvcache.tokenizer import BPETokenizer, CharTokenizer

log = get_logger("week1.prepare")
SHAKESPEARE_URL = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
SOURCES = ("auto", "shakespeare", "pydoc")


def pydoc_corpus() -> str:
    """CPython's own English help texts (the `help('topics')` pages): always installed."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k].strip() for k in sorted(topics)) + "\n"


def download_shakespeare(timeout_s: float = 15.0) -> str:
    with urllib.request.urlopen(SHAKESPEARE_URL, timeout=timeout_s) as r:
        return r.read().decode("utf-8")


def load_corpus(source: str = "auto", text_file: Path | str | None = None) -> tuple[str, str]:
    """(text, source name)."""
    if text_file is not None:
        path = Path(text_file)
        if not path.is_file():
            raise FileNotFoundError(f"--text-file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        if len(text) < 1000:
            raise ValueError(
                f"--text-file {path} has only {len(text)} characters; give it at least 1,000"
            )
        return text, f"file:{path}"
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


@dataclass
class PrepareConfig:
    tokenizer: str = "bpe"  # "bpe" or "char"
    vocab_size: int = 2048  # BPE only
    source: str = "auto"
    text_file: str | None = None
    out_dir: str | None = None  # default runs/week1/data-<tokenizer>
    val_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.tokenizer not in ("bpe", "char"):
            raise ValueError(f"tokenizer={self.tokenizer!r}: use bpe or char")
        if not 0 < self.val_fraction < 0.5:
            raise ValueError(f"val_fraction={self.val_fraction} must be in (0, 0.5)")


def main(cfg: PrepareConfig) -> dict:
    out = Path(cfg.out_dir) if cfg.out_dir else runs_root() / "week1" / f"data-{cfg.tokenizer}"
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


def parse_args(argv: list[str] | None = None) -> PrepareConfig:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokenizer", choices=["bpe", "char"], default="bpe")
    p.add_argument("--vocab-size", type=int, default=2048, help="BPE vocabulary size")
    p.add_argument("--source", choices=SOURCES, default="auto")
    p.add_argument("--text-file", default=None, help="train on this UTF-8 text file instead")
    p.add_argument("--out-dir", default=None)
    a = p.parse_args(argv)
    return PrepareConfig(a.tokenizer, a.vocab_size, a.source, a.text_file, a.out_dir)


if __name__ == "__main__":
    main(parse_args())
