"""From token ids to the text a client sees, a few tokens at a time.

Two stages, both holding text back until it is safe to send, both flushed at the end so the
concatenated stream equals the text of the whole answer:

- `Detokenizer`: byte-level BPE may split one character over several tokens, so a decode
  that ends in U+FFFD waits for the rest. Special tokens (EOS, ...) are not text.
- `StopStrings`: the output ends before the first stop string, which may span tokens; the
  tail of the text that could be the start of a stop string waits for the next tokens.
"""

from __future__ import annotations


class Detokenizer:
    """Incremental decoding: text for new tokens without re-decoding the whole output.

    Only a short window is decoded each time: the tokens already sent since `prefix_offset`
    (so a tokenizer that treats the start of a text specially sees the same context) and the
    new ones; the new text is what the window gained.
    """

    def __init__(self, tokenizer, skip_special_tokens: bool = True):
        self.tok, self.skip, self.ids = tokenizer, skip_special_tokens, []
        self.prefix_offset = self.read_offset = 0

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=self.skip)

    def add(self, new_ids: list[int]) -> str:
        self.ids += new_ids
        done = self.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.decode(self.ids[self.prefix_offset :])
        if full.endswith("\ufffd") or len(full) <= len(done):
            return ""
        self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
        return full[len(done) :]

    def flush(self) -> str:
        """At the end: whatever is held back, an unfinished character included."""
        done = self.decode(self.ids[self.prefix_offset : self.read_offset])
        full = self.decode(self.ids[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(done) :] if len(full) > len(done) else ""


class StopStrings:
    """Cuts the text before the first stop string; holds back a tail that could start one."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.text = ""  # everything seen (cut at the stop string once found)
        self.sent = 0  # characters of `text` released
        self.stopped = False

    def add(self, new: str) -> str:
        """The text that is safe to send now."""
        if self.stopped or not new:
            return ""
        self.text += new
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            self.text = self.text[: min(hits)]
            end = len(self.text)
        else:
            end = len(self.text) - self.partial_match()
        out, self.sent = self.text[self.sent : end], max(end, self.sent)
        return out

    def partial_match(self) -> int:
        """Length of the longest unsent tail of the text that begins some stop string."""
        longest = max((len(s) for s in self.stops), default=1)
        for k in range(min(longest - 1, len(self.text) - self.sent), 0, -1):
            tail = self.text[-k:]
            if any(s.startswith(tail) for s in self.stops):
                return k
        return 0

    def flush(self) -> str:
        """At the end (no stop string came): the held-back tail."""
        out, self.sent = self.text[self.sent :], len(self.text)
        return out
