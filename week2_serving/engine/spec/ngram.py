"""N-gram prompt lookup: guess the next tokens by copying what followed the same n-gram before.

No second model: take the last n tokens of the sequence (prompt + output so far), find the
latest earlier place where the same n tokens occur, and propose the tokens that followed
them there. The longest n (from `max_n` down to `min_n`) that matches wins: a longer match
is more specific, so its continuation is more likely right. It shines where the output
repeats its input (code edits, templated text, summaries quoting the source) and proposes
nothing where nothing repeats, so there it costs almost nothing.

    NgramProposer(min_n=1, max_n=3).propose([5, 6, 7, 8, 5, 6], k=3)  # -> [7, 8, 5]
    NgramProposer(min_n=1, max_n=3).propose([1, 2, 1, 2], k=3)        # -> [1, 2, 1]

Pure Python, no torch; as vLLM's `ngram` method (prompt_lookup_min / prompt_lookup_max).
"""

from __future__ import annotations


class NgramProposer:
    def __init__(self, min_n: int = 1, max_n: int = 3):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"need 1 <= spec_ngram_min <= spec_ngram_max, got {min_n}, {max_n}")
        self.min_n, self.max_n = min_n, max_n

    def propose(self, tokens: list[int], k: int) -> list[int]:
        """Up to k tokens that followed the latest earlier occurrence of the longest suffix
        n-gram (min_n <= n <= max_n); [] when no suffix occurs earlier."""
        if k <= 0:
            return []
        L = len(tokens)
        for n in range(min(self.max_n, L - 1), self.min_n - 1, -1):
            start = self._latest_match(tokens, n)
            if start is not None:  # copy what followed, token by token
                out: list[int] = []
                for i in range(k):  # a copy that runs into the end continues into itself
                    pos = start + n + i  # (a repeat: LZ77's overlapping copy)
                    out.append(tokens[pos] if pos < L else out[pos - L])
                return out
        return []

    @staticmethod
    def _latest_match(tokens: list[int], n: int) -> int | None:
        """Where the suffix of length n last occurred before itself, or None."""
        L = len(tokens)
        suffix = tokens[L - n :]
        first = suffix[0]
        for start in range(L - n - 1, -1, -1):  # latest first; the suffix itself excluded
            if tokens[start] == first and tokens[start : start + n] == suffix:
                return start
        return None
