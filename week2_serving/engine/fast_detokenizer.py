"""Streamed text for byte-level BPE tokenizers without calling the tokenizer per token.

The plain `Detokenizer` (detokenizer.py) decodes a window of ids twice for every new token,
which is most of the event loop's detokenizing work while it streams. For a byte-level BPE
tokenizer (GPT-2, Llama 3, Qwen, week 1's) a token *is* a byte string: its vocabulary entry
spelled with GPT-2's byte-to-character map. So the text of new tokens is their bytes, joined,
through Python's incremental UTF-8 decoder, which holds back an unfinished character exactly as
the plain path holds back a trailing U+FFFD. Special tokens (EOS, ...) are no bytes at all.

`make_detokenizer` picks this path only where it gives the plain path's text: a tokenizer whose
decoder is ByteLevel alone, that does not clean up spaces and has no added tokens besides
special ones; anything else gets the plain `Detokenizer`. tests/test_week2_engine_speed2.py
checks both give the same text on random ids, invalid UTF-8 included.
"""

from __future__ import annotations

import codecs
import json
import weakref

from week2_serving.engine.detokenizer import Detokenizer

_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> table or None
_enabled = True  # the server's --fast-detokenize / --no-fast-detokenize


def set_enabled(on: bool) -> None:
    global _enabled
    _enabled = bool(on)


def byte_alphabet() -> dict[str, int]:
    """GPT-2's map back from the printable character standing for a byte to the byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:  # the rest are shifted past 255
            chars[b], extra = chr(256 + extra), extra + 1
    return {c: b for b, c in chars.items()}


def byte_table(tokenizer) -> list[bytes] | None:
    """Each token id's bytes (b"" for special tokens), or None where decoding is more than
    joining bytes (another decoder, space clean-up, non-special added tokens)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or getattr(tokenizer, "clean_up_tokenization_spaces", False):
        return None
    spec = json.loads(backend.to_str())
    if (spec.get("decoder") or {}).get("type") != "ByteLevel" or spec["model"]["type"] != "BPE":
        return None
    if any(not t.special for t in tokenizer.added_tokens_decoder.values()):
        return None
    alphabet, special = byte_alphabet(), set(tokenizer.all_special_ids)
    table = []
    for i, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))):
        if i in special or piece is None:
            table.append(b"")
        elif all(c in alphabet for c in piece):
            table.append(bytes(alphabet[c] for c in piece))
        else:  # not byte-level after all
            return None
    return table


class ByteDetokenizer:
    """`Detokenizer`'s interface (add / flush) over a byte table and an incremental decoder."""

    def __init__(self, table: list[bytes]):
        self.table = table
        self.utf8 = codecs.getincrementaldecoder("utf-8")("replace")

    def add(self, new_ids: list[int]) -> str:
        table, n = self.table, len(self.table)  # ids past the tokenizer's (a padded vocab): no text
        return self.utf8.decode(b"".join([table[i] if i < n else b"" for i in new_ids]))

    def flush(self) -> str:
        """At the end: an unfinished character becomes U+FFFD, as the plain decode gives."""
        return self.utf8.decode(b"", final=True)


def make_detokenizer(tokenizer) -> Detokenizer | ByteDetokenizer:
    """The byte path where it is exact (and enabled), else the plain incremental decode."""
    if not _enabled:
        return Detokenizer(tokenizer)
    if tokenizer not in _TABLES:  # once per tokenizer (the server has one)
        _TABLES[tokenizer] = byte_table(tokenizer)
    table = _TABLES[tokenizer]
    return Detokenizer(tokenizer) if table is None else ByteDetokenizer(table)
