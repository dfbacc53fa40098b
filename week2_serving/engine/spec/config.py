"""What speculative decoding is asked to do: the method, k, and the method's own knobs.

    SpecConfig(method="ngram", num_speculative_tokens=3, ngram_min=1, ngram_max=4)
    SpecConfig(method="draft", num_speculative_tokens=3, draft_model="runs/week1/hf-draft")

Validated here, before any weights load: a hostile number (bool, NaN, negative, huge) is an
error naming it. Pure Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

METHODS = {
    "ngram": "copy what followed the latest earlier match of the last n tokens (no model)",
    "draft": "a smaller model with the same tokenizer guesses, the target verifies",
}
MAX_SPEC_TOKENS = 16  # more guesses than this are almost never all accepted
MAX_NGRAM = 64  # longest n-gram looked up


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class SpecConfig:
    method: str = "ngram"  # a name in METHODS
    num_speculative_tokens: int = 3  # k: tokens proposed per step, verified in one forward
    ngram_min: int = 1  # ngram: shortest suffix n-gram to look up
    ngram_max: int = 4  # ngram: longest suffix n-gram to look up (longest match wins)
    draft_model: str | Path | None = None  # draft: HF folder of the draft model (same tokenizer)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"speculative method {self.method!r}: use one of {', '.join(METHODS)}")
        k = self.num_speculative_tokens
        if not _is_int(k) or not 1 <= k <= MAX_SPEC_TOKENS:
            raise ValueError(
                f"num_speculative_tokens={k!r}: use an integer in 1..{MAX_SPEC_TOKENS}"
            )
        lo, hi = self.ngram_min, self.ngram_max
        if not (_is_int(lo) and _is_int(hi) and 1 <= lo <= hi <= MAX_NGRAM):
            raise ValueError(
                f"spec_ngram_min={lo!r}, spec_ngram_max={hi!r}: use integers with "
                f"1 <= min <= max <= {MAX_NGRAM}"
            )
        if self.method == "draft" and not self.draft_model:
            raise ValueError("speculative method 'draft' needs a draft model: pass --draft-model")
