"""How the next token is picked from the logits: greedy, temperature, top-k, top-p (nucleus).

One `SamplingParams` and one rule, used by week 1's `generate` and by week 2's engine.

    params = SamplingParams(temperature=0.8, top_k=50, top_p=0.95, seed=0)
    next_ids = sample(logits, params, generator)  # (B, V) -> (B,)

"Off" is always a value of the field's own type, never None: `top_k=0` keeps every token,
`top_p=1.0` keeps the whole distribution, `temperature` below `GREEDY_BELOW` (0 included) is
greedy (argmax), `min_tokens=0` lets a stop token end the output at once. Only `seed` and
`logprobs` use None: no seed (a fresh random generator), no logprobs.

The rule, in order: divide the logits by the temperature, keep the top-k, keep the smallest
set of tokens whose probability reaches top_p (the most likely token always stays), then draw
from the softmax of what is left. A value that passed `__post_init__` never makes `sample`
raise, whatever the logits hold (huge or tiny numbers, -inf everywhere but one token, ties).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch

GREEDY_BELOW = 1e-5  # a temperature below this is greedy: dividing by it would only overflow
MAX_TEMPERATURE = 100.0  # above this the distribution is uniform to float precision anyway
SEED_RANGE = (-(2**63), 2**64)  # any signed or unsigned 64-bit integer, as torch accepts
MAX_LOGPROBS = 20  # most alternatives per token (OpenAI's chat limit)
MAX_N = 16  # most completions per prompt


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


@dataclass
class SamplingParams:
    """What vLLM's SamplingParams means by the same names (the subset implemented here).

    Week 1's `generate` reads max_tokens, temperature, top_k, top_p, seed, stop_token_ids and
    min_tokens; the engine reads them all (n is expanded by the server: `choices()`).
    """

    max_tokens: int = 16  # most new tokens (a stop token ends the output sooner)
    temperature: float = 0.0  # [0, 100]; below GREEDY_BELOW (0 included): greedy
    top_k: int = 0  # keep the k most likely tokens; 0: off
    top_p: float = 1.0  # (0, 1]: keep the smallest set reaching this probability; 1: off
    seed: int | None = None  # a 64-bit integer: same seed, same tokens; None: random
    stop_token_ids: tuple[int, ...] = ()  # tokens that end the output (the token is dropped)
    ignore_eos: bool = False  # the engine: EOS does not end the output (stop_token_ids still do)
    min_tokens: int = 0  # EOS and stop_token_ids are masked until this many tokens exist
    logprobs: int | None = None  # None: off; k: the chosen token's logprob + k alternatives
    n: int = 1  # completions wanted for the prompt (the server runs one sequence per choice)

    def __post_init__(self) -> None:
        self.stop_token_ids = tuple(self.stop_token_ids)
        for name in ("max_tokens", "top_k", "min_tokens", "n"):
            if not _is_int(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r} must be an integer")
        for name in ("temperature", "top_p"):
            if not _is_number(getattr(self, name)):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a finite number")
        self._check_ranges()

    def _check_ranges(self) -> None:
        checks = [
            (self.max_tokens >= 1, "max_tokens", "must be >= 1"),
            (0 <= self.temperature <= MAX_TEMPERATURE, "temperature", "must be in [0, 100]"),
            (self.top_k >= 0, "top_k", "must be >= 0 (0 turns it off)"),
            (0 < self.top_p <= 1, "top_p", "must be in (0, 1] (1 turns it off)"),
            (0 <= self.min_tokens <= self.max_tokens, "min_tokens", "must be in [0, max_tokens]"),
            (1 <= self.n <= MAX_N, "n", f"must be in [1, {MAX_N}]"),
        ]
        for ok, name, rule in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} {rule}")
        lo, hi = SEED_RANGE
        if self.seed is not None and not (_is_int(self.seed) and lo <= self.seed < hi):
            raise ValueError(f"seed={self.seed!r} must be an integer in [-2**63, 2**64) or None")
        lp = self.logprobs
        if lp is not None and not (_is_int(lp) and 0 <= lp <= MAX_LOGPROBS):
            raise ValueError(f"logprobs={lp!r} must be an integer in [0, {MAX_LOGPROBS}] or None")
        if not all(_is_int(t) and t >= 0 for t in self.stop_token_ids):
            raise ValueError(f"stop_token_ids={self.stop_token_ids!r} must be token ids >= 0")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos={self.ignore_eos!r} must be true or false")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW

    def choices(self) -> list[SamplingParams]:
        """One SamplingParams (n=1) per choice; choice i's seed is derived from this seed."""
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return [
            SamplingParams(**{**fields, "n": 1, "seed": choice_seed(self.seed, i)})
            for i in range(self.n)
        ]


def choice_seed(seed: int | None, index: int) -> int | None:
    """Choice 0 keeps the request's seed (n=1 gives what it always gave); choice i > 0 gets a
    seed mixed from (seed, i) by splitmix64, so nearby seeds do not share choices."""
    if seed is None or index == 0:
        return seed
    z = (seed + index * 0x9E3779B97F4A7C15) % 2**64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) % 2**64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) % 2**64
    return z ^ (z >> 31)


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)  # torch takes [-2**63, 2**64), as SamplingParams checks
    return g


def scale(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(..., V) logits / temperature in float32, shifted so each row's largest is 0.

    Shifting first means the division cannot overflow into inf - inf = NaN: every value is
    <= 0 afterwards. NaN logits become -inf (never chosen), +inf the largest float.
    """
    big = torch.finfo(torch.float32).max
    x = torch.nan_to_num(logits.float(), nan=-math.inf, posinf=big, neginf=-math.inf)
    top = x.amax(-1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))  # an all -inf row
    return (x - top) / temperature


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """(..., V) logits with everything outside the top-k / the top-p nucleus set to -inf."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (..., 1); ties all stay
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p (the first stays)
        drop = probs.cumsum(-1) - probs >= top_p
        unsorted = torch.empty_like(drop).scatter_(-1, order, drop)  # back to vocab order
        logits = logits.masked_fill(unsorted, -math.inf)
    return logits


def sample(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, V) logits -> (B,) token ids, by the rule in this module's docstring."""
    if params.greedy:
        return logits.masked_fill(logits.isnan(), -math.inf).argmax(-1)
    x = filter_logits(scale(logits, params.temperature), params.top_k, params.top_p)
    probs = torch.nan_to_num(x.softmax(-1), nan=0.0)  # a row with no finite logit: all NaN
    empty = probs.sum(-1, keepdim=True) <= 0
    if bool(empty.any()):  # nothing to draw from: take token 0, as argmax of that row would
        first = torch.zeros_like(probs)
        first[..., 0] = 1.0
        probs = torch.where(empty, first, probs)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def mask_tokens(logits: torch.Tensor, token_ids: Iterable[int]) -> torch.Tensor:
    """A copy of (..., V) logits with `token_ids` (those inside the vocabulary) set to -inf."""
    ids = [t for t in token_ids if 0 <= t < logits.shape[-1]]
    if not ids:
        return logits
    out = logits.clone()
    out[..., ids] = -math.inf
    return out


@dataclass
class TokenLogprobs:
    """The chosen token's log-probability and the `k` most likely tokens' (id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


def token_logprobs(logits: torch.Tensor, token_id: int, k: int) -> TokenLogprobs:
    """Log-probabilities under the model's own distribution (before temperature and filters,
    as vLLM reports them by default) for one (V,) row of logits."""
    lp = torch.nan_to_num(logits.float().log_softmax(-1), nan=-math.inf)
    top = torch.topk(lp, min(k, lp.numel())) if k else None
    pairs = list(zip(top.indices.tolist(), top.values.tolist())) if top is not None else []
    return TokenLogprobs(token_id, float(lp[token_id]), pairs)
