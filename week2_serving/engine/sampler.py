"""Pick the next token of each sequence from its logits, by week 1's one sampling rule.

Greedy rows are one batched argmax. Plain temperature rows (no seed, top-k, top-p, logprobs or
min_tokens) are one batched draw on the device (`batched`, on by default). Every other sampled
row uses its own `torch.Generator`, seeded from the request's `seed`, so a request with a seed
gets the same tokens whatever else shares its batch (and after a preemption: the generator is
not reset); that per-row loop is the reference the batched draw is tested against.

Two per-request additions on top of `week1_gpt_kvcache.sampling.sample`:
- `min_tokens`: EOS and the stop tokens are masked (-inf) until the output is that long;
- `logprobs`: the chosen token's log-probability (and the top-k alternatives) under the
  model's distribution, appended to `seq.output_logprobs` for the server to report;
- structured output (structured.py): a row whose sequence has a grammar always takes the
  per-row path, where the tokens the grammar forbids are masked (-inf); `accept` then moves
  each grammar on by its token, once the step's sampling is final.
"""

from __future__ import annotations

import torch

from week1_gpt_kvcache.sampling import (
    make_generator,
    mask_tokens,
    sample,
    scale,
    token_logprobs,
)
from week2_serving.engine.scheduler import fail
from week2_serving.engine.sequence import Sequence


class Sampler:
    batched = True  # plain temperature rows in one draw; False: each row on its own (reference)

    def __init__(self) -> None:
        self.generators: dict[int, torch.Generator] = {}  # seq_id -> its generator
        self.shared: torch.Generator | None = None  # the batched draw's (unseeded rows only)

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

    def is_plain(self, seq: Sequence) -> bool:
        """May this row join the batched draw: temperature only, nothing per-request?"""
        p = seq.params
        if p.greedy or p.seed is not None or p.logprobs is not None or p.top_k or p.top_p < 1:
            return False
        if seq.grammar is not None:  # structured output: masked in the per-row path
            return False
        return seq.num_output_tokens >= p.min_tokens  # min_tokens masks stop tokens: per row

    def draw(self, logits: torch.Tensor, rows: list[int], seqs: list[Sequence]) -> list[int]:
        """One multinomial draw for the plain temperature rows: (R, V) -> R token ids."""
        if self.shared is None:
            self.shared = make_generator(None, logits.device)
        temps = torch.tensor([seqs[i].params.temperature for i in rows], device=logits.device)
        x = scale(logits[rows], 1.0) / temps[:, None]  # (R, V) shifted, then per-row temperature
        probs = torch.nan_to_num(x.softmax(-1), nan=0.0)
        probs[probs.sum(-1) <= 0, 0] = 1.0  # a row with nothing to draw from: token 0
        return torch.multinomial(probs, 1, generator=self.shared).squeeze(-1).tolist()

    @torch.inference_mode()
    def __call__(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        """logits (S, V), one row per sequence -> one token id per sequence."""
        # greedy for everyone (the other rows are overwritten); in float32, where the CPU's
        # argmax is vectorised (the 16-bit types' is not), and the values, so the winner, are
        # the same
        out = logits.float().argmax(-1).tolist()
        plain = [i for i, s in enumerate(seqs) if self.is_plain(s)] if self.batched else []
        for i, t in zip(plain, self.draw(logits, plain, seqs) if plain else []):
            out[i] = t
        skip = set(plain)
        for i, seq in enumerate(seqs):
            if i in skip:
                continue
            p, banned = seq.params, self.banned(seq)
            if not p.greedy or banned or seq.grammar is not None:
                row = mask_tokens(logits[i : i + 1], banned).cpu()  # the generators live here
                if seq.grammar is not None:  # structured output: only what the grammar allows
                    row = seq.grammar.mask(row)
                out[i] = int(sample(row, p, self._generator(seq))[0])
            if p.logprobs is not None:
                seq.output_logprobs.append(token_logprobs(logits[i], out[i], p.logprobs))
        return out

    @staticmethod
    def accept(seqs: list[Sequence], sampled: dict[int, int]) -> dict[int, int]:
        """Move each sampled sequence's grammar on by its token (after the step's sampling is
        final: a row sampled twice must not be accepted twice). A token the grammar refuses
        fails that request; a grammar that ended without a stop token finishes it ("stop")."""
        for seq in seqs:
            token = sampled.get(seq.seq_id)
            if seq.grammar is None or token is None:
                continue
            if not seq.grammar.accept(token):
                fail(seq, ValueError(f"token {token} is not allowed by the request's grammar"))
                del sampled[seq.seq_id]
            elif seq.grammar.is_terminated() and token not in seq.eos_token_ids:
                seq.finish("stop")
        return sampled
