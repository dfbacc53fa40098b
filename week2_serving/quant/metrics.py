"""The quality metrics of a served variant, as pure functions of what vLLM returns.

- `prompt_token_logprobs` / `prompt_top1`: read vLLM's `prompt_logprobs` field;
- `perplexity`: exp(-mean log p) over every predicted token;
- `greedy_agreement`: how often two sets of greedy continuations agree, position by position.
"""

from __future__ import annotations

import math


def prompt_token_logprobs(prompt_ids: list[int], prompt_logprobs: list[dict | None]) -> list[float]:
    """log p(prompt[i] | prompt[:i]) for i ≥ 1 from vLLM's `prompt_logprobs` field.

    vLLM returns one entry per prompt token: None for the first (nothing predicts it), then a
    dict {token id (str): {"logprob": float, ...}} holding the actual token (plus top-k ones).
    """
    if len(prompt_logprobs) != len(prompt_ids):
        raise ValueError(
            f"{len(prompt_logprobs)} prompt_logprobs entries for {len(prompt_ids)} prompt tokens"
        )
    out = []
    for i, (tok, entry) in enumerate(zip(prompt_ids[1:], prompt_logprobs[1:]), start=1):
        if not entry or str(tok) not in entry:
            raise ValueError(f"prompt_logprobs[{i}] has no entry for the prompt token {tok}")
        value = entry[str(tok)]
        out.append(float(value["logprob"] if isinstance(value, dict) else value))
    return out


def prompt_top1(prompt_logprobs: list[dict | None]) -> list[int]:
    """The model's most likely token at each prompt position i ≥ 1 (teacher forcing: every
    position sees the true text before it), from `prompt_logprobs` requested with k ≥ 1."""
    out = []
    for i, entry in enumerate(prompt_logprobs[1:], start=1):
        top = [int(t) for t, v in (entry or {}).items() if isinstance(v, dict) and v["rank"] == 1]
        if not top:
            raise ValueError(
                f"prompt_logprobs[{i}] has no rank-1 token: request prompt_logprobs>=1"
            )
        out.append(top[0])
    return out


def perplexity(logprobs: list[list[float]]) -> dict:
    """exp(−mean log p) over every predicted token of every sequence (natural log)."""
    flat = [lp for seq in logprobs for lp in seq]
    if not flat:
        raise ValueError("perplexity needs at least one token log-probability, got none")
    bad = [lp for lp in flat if not math.isfinite(lp) or lp > 0]
    if bad:
        raise ValueError(f"log-probabilities must be finite and <= 0, got e.g. {bad[0]}")
    nll = -sum(flat) / len(flat)
    return {"perplexity": math.exp(nll), "mean_nll": nll, "tokens": len(flat)}


def greedy_agreement(reference: list[list[int]], other: list[list[int]]) -> dict:
    """How often `other`'s greedy tokens equal `reference`'s, position by position.

    token_agreement: matching positions / all positions (N prompts × M tokens);
    exact_match: fraction of prompts whose whole continuation is identical;
    mean_prefix_match: mean fraction of a continuation that is identical before the first
    difference (after one differing token the contexts differ, so later tokens often do too).
    """
    if len(reference) != len(other) or not reference:
        raise ValueError(f"need the same number of outputs, got {len(reference)} vs {len(other)}")
    matches = total = exact = 0
    prefix = 0.0
    for i, (ref, out) in enumerate(zip(reference, other)):
        if len(ref) != len(out) or not ref:
            raise ValueError(
                f"output {i}: {len(out)} tokens vs {len(ref)} in the reference (use ignore_eos)"
            )
        same = [a == b for a, b in zip(ref, out)]
        matches += sum(same)
        total += len(ref)
        exact += all(same)
        first_diff = same.index(False) if False in same else len(same)
        prefix += first_diff / len(ref)
    return {
        "token_agreement": matches / total,
        "exact_match": exact / len(reference),
        "mean_prefix_match": prefix / len(reference),
        "prompts": len(reference),
        "tokens_per_prompt": len(reference[0]),
    }
