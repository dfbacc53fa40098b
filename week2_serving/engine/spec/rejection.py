"""The acceptance rule of speculative sampling, as pure functions over probability tensors.

A proposer guessed k tokens d_1..d_k, each drawn from its own distribution q_j; the target
model scored all of them in one forward pass, giving p_j for every position (and p_{k+1}
after the last guess). Walk the guesses in order (Leviathan et al. 2023, Chen et al. 2023):

- accept d_j with probability min(1, p_j(d_j) / q_j(d_j));
- at the first rejection, draw the replacement from norm(max(0, p_j - q_j)) and stop;
- if all k pass, draw a bonus token from p_{k+1}.

Every emitted token is then distributed exactly as the target alone would have sampled it:
where q over-proposes a token (q > p) it is thinned down to p by the acceptance test, and the
residual max(0, p - q) adds back exactly the mass q under-proposed. A proposer with no
distribution (n-gram lookup) is a point mass: q = one-hot(d), so d is accepted with
probability p(d) and the residual is p with d removed.

Greedy decoding is the limit where p and q are one-hot at their argmax: accept d_j iff it is
the target's argmax; the replacement is the argmax. `greedy_accept` does that with integer
comparisons, so greedy speculation gives exactly the tokens of greedy decoding.

Shapes: k proposed tokens, V vocabulary.
"""

from __future__ import annotations

import math

import torch

from week1_gpt_kvcache.sampling import SamplingParams, filter_logits, scale


def probs_from_logits(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """(..., V) logits -> (..., V) float32 probabilities under temperature, top-k and top-p:
    the distribution `week1_gpt_kvcache.sampling.sample` draws from (applied to p and q alike)."""
    x = filter_logits(scale(logits, params.temperature), params.top_k, params.top_p)
    probs = torch.nan_to_num(x.softmax(-1), nan=0.0)
    empty = probs.sum(-1, keepdim=True) <= 0  # no finite logit: token 0, as `sample` does
    first = torch.zeros_like(probs)
    first[..., 0] = 1.0
    return torch.where(empty, first, probs)


def one_hot_probs(tokens: list[int], vocab: int) -> torch.Tensor:
    """(k, V) point masses: the "distribution" of a proposer that simply names its tokens."""
    q = torch.zeros(len(tokens), vocab)
    q[torch.arange(len(tokens)), torch.tensor(tokens, dtype=torch.long)] = 1.0
    return q


def greedy_accept(target_argmax: list[int], draft: list[int]) -> list[int]:
    """Greedy: the longest prefix of `draft` the target agrees with, then the target's token.

    target_argmax holds k + 1 tokens (one per verified position); returns 1..k+1 tokens."""
    # LAB:spec-rejection begin
    # HINT: walk target and draft together, emitting the target's token each time; stop after
    # HINT: the first disagreement. All k agreed: add the target's bonus token (its last).
    out = []
    for want, guess in zip(target_argmax, draft):
        out.append(want)
        if want != guess:
            return out
    return out + [target_argmax[len(draft)]]
    # LAB:spec-rejection end


def rejection_sample(
    p: torch.Tensor,  # (k + 1, V) target probabilities at each verified position
    q: torch.Tensor,  # (k, V) proposer probabilities the draft tokens were drawn from
    draft: list[int],  # the k proposed tokens
    generator: torch.Generator | None = None,
) -> list[int]:
    """The emitted tokens: the accepted prefix of `draft`, then a replacement or a bonus.

    Returns between 1 and k + 1 tokens."""
    k = len(draft)
    if p.shape[0] != k + 1 or q.shape[0] != k:
        raise ValueError(f"need p of {k + 1} rows and q of {k}, got {p.shape[0]} and {q.shape[0]}")
    # LAB:spec-rejection begin
    # HINT: one uniform u_j per draft token (torch.rand(k, generator=generator)), p and q as
    # HINT: float32 on the CPU. Accept d_j when u_j * q_j(d_j) < p_j(d_j) (and q_j(d_j) > 0).
    # HINT: at the first rejection: draw (function `draw`) from max(0, p_j - q_j), or from p_j
    # HINT: when that residual is all zero, and stop. All accepted: a bonus draw from p[k].
    p, q = p.float().cpu(), q.float().cpu()
    uniforms = torch.rand(k, generator=generator)  # (k,) one draw per proposed token
    out: list[int] = []
    for j, d in enumerate(draft):
        pj, qj = float(p[j, d]), float(q[j, d])
        if qj > 0 and float(uniforms[j]) * qj < pj:  # u < p/q, without dividing
            out.append(d)
            continue
        residual = (p[j] - q[j]).clamp_min(0)  # (V,)
        return out + [draw(residual if float(residual.sum()) > 0 else p[j], generator)]
    return out + [draw(p[k], generator)]
    # LAB:spec-rejection end


def draw(weights: torch.Tensor, generator: torch.Generator | None = None) -> int:
    """One token from (V,) non-negative weights (normalised by multinomial)."""
    if not math.isfinite(float(weights.sum())) or float(weights.sum()) <= 0:
        raise ValueError("cannot draw from weights that sum to zero or are not finite")
    return int(torch.multinomial(weights, 1, generator=generator))
