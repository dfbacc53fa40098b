"""Pick the next token of each sequence from its logits, by week 1's one sampling rule.

Greedy rows are one batched argmax. Sampled rows each use their own `torch.Generator`, seeded
from the request's `seed`, so a request with a seed gets the same tokens whatever else shares
its batch (and after a preemption: the generator is not reset).

Two per-request additions on top of `week1_gpt_kvcache.sampling.sample`:
- `min_tokens`: EOS and the stop tokens are masked (-inf) until the output is that long;
- `logprobs`: the chosen token's log-probability (and the top-k alternatives) under the
  model's distribution, appended to `seq.output_logprobs` for the server to report.
"""

from __future__ import annotations

import torch

from week1_gpt_kvcache.sampling import make_generator, mask_tokens, sample, token_logprobs
from week2_serving.engine.sequence import Sequence


class Sampler:
    def __init__(self) -> None:
        self.generators: dict[int, torch.Generator] = {}  # seq_id -> its generator

    def _generator(self, seq: Sequence) -> torch.Generator:
        g = self.generators.get(seq.seq_id)
        if g is None:
            g = self.generators[seq.seq_id] = make_generator(seq.params.seed)
        return g

    def forget(self, seq: Sequence) -> None:
        self.generators.pop(seq.seq_id, None)

    @staticmethod
    def banned(seq: Sequence) -> list[int]:
        """The tokens this sequence may not sample now: stop tokens before `min_tokens`."""
        p = seq.params
        if seq.num_output_tokens >= p.min_tokens:
            return []
        return sorted(seq.eos_token_ids) + list(p.stop_token_ids)

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """logits (S, V), one row per sequence -> one token id per sequence."""
        out = logits.argmax(-1).tolist()  # greedy for everyone; the other rows overwritten
        for i, seq in enumerate(seqs):
            p, banned = seq.params, self.banned(seq)
            if not p.greedy or banned:
                row = mask_tokens(logits[i : i + 1], banned).cpu()  # the generators live here
                out[i] = int(sample(row, p, self._generator(seq))[0])
            if p.logprobs is not None:
                seq.output_logprobs.append(token_logprobs(logits[i], out[i], p.logprobs))
        return out
