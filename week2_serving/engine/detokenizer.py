"""Incremental detokenization for streamed responses."""

from __future__ import annotations


class Detokenizer:
    """Incremental decoding: text for new tokens without re-decoding the whole output.

    Byte-level BPE may split one character over several tokens; a decode that ends in U+FFFD
    is held back until the rest arrives. Only a short window is decoded each time.
    """

    def __init__(self, tokenizer):
        self.tok, self.ids = tokenizer, []
        self.prefix_offset = self.read_offset = 0

    def add(self, new_ids: list[int]) -> str:
        self.ids += new_ids
        done = self.tok.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.tok.decode(self.ids[self.prefix_offset :])
        if full.endswith("\ufffd") or len(full) <= len(done):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return full[len(done) :]
