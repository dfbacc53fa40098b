"""Pick the next token of each sequence from its logits: greedy, temperature, top-k, top-p.

Greedy rows are one batched argmax. Sampled rows each use their own `torch.Generator`, seeded
from the request's `seed`, so a request with a seed gets the same tokens whatever else shares
its batch (and after a preemption: the generator is not reset).
"""

from __future__ import annotations

import torch

from week2_serving.engine.sequence import Sequence


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """(V,) logits with everything outside the top-k / the top-p nucleus set to -inf."""
    if top_k > 0 and top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already reach top_p (the first stays)
        drop = probs.cumsum(-1) - probs >= top_p
        unsorted = torch.empty_like(drop).scatter_(0, order, drop)  # back to vocab order
        logits = logits.masked_fill(unsorted, float("-inf"))
    return logits


class Sampler:
    def __init__(self) -> None:
        self.generators: dict[int, torch.Generator] = {}  # seq_id -> its generator

    def _generator(self, seq: Sequence) -> torch.Generator:
        g = self.generators.get(seq.seq_id)
        if g is None:
            g = torch.Generator()
            if seq.params.seed is not None:
                g.manual_seed(seq.params.seed)
            else:
                g.seed()
            self.generators[seq.seq_id] = g
        return g

    def forget(self, seq: Sequence) -> None:
        self.generators.pop(seq.seq_id, None)

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """logits (S, V), one row per sequence -> one token id per sequence."""
        out = logits.argmax(-1).tolist()  # greedy for everyone; sampled rows overwritten
        for i, seq in enumerate(seqs):
            p = seq.params
            if p.greedy:
                continue
            row = logits[i].float().cpu() / p.temperature  # the generators live on the CPU
            row = filter_logits(row, p.top_k, p.top_p)
            probs = row.softmax(-1)
            out[i] = int(torch.multinomial(probs, 1, generator=self._generator(seq)))
        return out
