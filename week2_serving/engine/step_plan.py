"""A step's flat inputs built with a few tensor ops instead of a Python loop per token.

`ModelRunner.prepare` (the reference) walks every scheduled token in Python: its position, its
slot `block_table[p // bs] * bs + p % bs`, and builds each attention group from lists. Here the
per-sequence numbers (tokens computed so far, tokens this step, block table) go to the device
once, as three small tensors, and everything per token is derived from them:

    seq_of_row = repeat_interleave(arange(B), n)             # (N,) which sequence each row is
    positions  = computed[seq_of_row] + (row - row_start[seq_of_row])
    slots      = tables[seq_of_row, positions // bs] * bs + positions % bs

The attention groups are the same as the reference's (decodes bucketed by the power of two of
their context length, each prefill chunk on its own), cut out of the one block-table tensor by
index instead of being rebuilt from lists; equality with the reference is tested.

Shapes: B sequences this step, N tokens, M blocks in the longest block table.
"""

from __future__ import annotations

from itertools import accumulate, chain

import torch

from week2_serving.engine.attention import AttnGroup, group_of
from week2_serving.engine.scheduler import ScheduledBatch


def padded_tables(seqs) -> list[list[int]]:
    """Every sequence's block table, padded with block 0 to the longest: (B, M)."""
    M = max(len(s.block_table) for s in seqs)
    return [s.block_table + [0] * (M - len(s.block_table)) for s in seqs]


class StepPlanner:
    """Builds the flat inputs; keeps an `arange` large enough for any step (reused, not remade)."""

    def __init__(
        self,
        block_size: int,
        device: torch.device,
        dtype: torch.dtype,
        bucket: bool = True,
        groups: bool = True,  # False: no SDPA groups (attention by the paged op: paged_cpu.py)
    ):
        self.bs, self.device, self.dtype = block_size, device, dtype
        # decodes bucketed by context length (the reference), or all in one padded group: one
        # SDPA call per layer instead of one per bucket, for more masked-out keys
        self.bucket, self.build_groups = bucket, groups
        self.arange = torch.arange(1024, device=device)

    def iota(self, n: int) -> torch.Tensor:
        """arange(n), a view of one preallocated buffer (grown when a step is longer)."""
        if n > self.arange.numel():
            self.arange = torch.arange(2 * n, device=self.device)
        return self.arange[:n]

    def plan(self, batch: ScheduledBatch, ahead: bool = False):
        """(ids, positions, slot_mapping, groups, sample_rows, tables, seq_of_row) for `batch`,
        as the reference. `ahead` (overlap.py): the decode step after the one running now,
        planned before its tokens exist: every position one further, the ids left 0 (the
        caller fills them in once they are sampled)."""
        seqs, ns, dev = batch.seqs, batch.num_tokens, self.device
        cs = [s.num_computed + ahead for s in seqs]
        ids = (
            [0] * sum(ns)
            if ahead
            else list(  # a speculating sequence's rows end with its
                chain.from_iterable(  # proposed tokens (spec/)
                    (s.tokens[c : c + n] + s.spec_tokens)[:n] for s, c, n in zip(seqs, cs, ns)
                )
            )
        )
        tables = torch.tensor(padded_tables(seqs))
        per_seq = torch.tensor([cs, ns, batch.sample])  # (3, B) one host -> device copy
        tables, per_seq = tables.to(dev), per_seq.to(dev)
        computed, n, want = per_seq[0], per_seq[1], per_seq[2].bool()
        B, N = len(seqs), len(ids)
        row_start = torch.cumsum(n, 0) - n  # (B,)
        seq_of_row = torch.repeat_interleave(self.iota(B), n, output_size=N)  # (N,)
        positions = computed[seq_of_row] + self.iota(N) - row_start[seq_of_row]  # (N,)
        blocks = tables[seq_of_row, positions // self.bs]  # (N,)
        slot_mapping = blocks * self.bs + positions % self.bs  # (N,)
        if any(s.spec_tokens for s in seqs):  # the last 1 + k rows of a speculating sequence
            starts = [0, *accumulate(ns)]
            rows = [
                r
                for s, st, q, w in zip(seqs, starts, ns, batch.sample)
                if w
                for r in range(st + q - 1 - len(s.spec_tokens), st + q)
            ]
            sample_rows = torch.tensor(rows, dtype=torch.long, device=dev)  # (S,)
        else:
            sample_rows = (row_start + n - 1)[want]  # (S,)
        groups = []
        if self.build_groups:
            spec = [bool(s.spec_tokens) for s in seqs]
            groups = self.groups(tables, computed + n, n, row_start, cs, ns, spec)
        ids_t = torch.tensor(ids, device=dev)
        return ids_t, positions, slot_mapping, groups, sample_rows, tables, seq_of_row

    def groups(
        self,
        tables: torch.Tensor,  # (B, M)
        ctx: torch.Tensor,  # (B,) keys per sequence after this step
        n: torch.Tensor,  # (B,) queries per sequence
        row_start: torch.Tensor,  # (B,)
        cs: list[int],
        ns: list[int],
        spec: list[bool],  # a speculating decode: 1 + k queries, grouped with the decodes
    ) -> list[AttnGroup]:
        """Decodes bucketed by the power of two of their context length, then one group per
        prefill chunk: the reference's grouping (`attention.plan_groups`), in the same order."""
        buckets: dict[int, list[int]] = {}
        prefill = []
        for i, (c, q, sp) in enumerate(zip(cs, ns, spec)):
            if q == 1 or sp:
                buckets.setdefault((c + q).bit_length() if self.bucket else 0, []).append(i)
            else:
                prefill.append(i)
        out = []
        for _, idx in sorted(buckets.items()):
            out.append(self.group(idx, tables, ctx, n, row_start, T=max(ns[i] for i in idx)))
        for i in prefill:
            out.append(self.group([i], tables, ctx, n, row_start, T=ns[i]))
        return out

    def group(self, idx: list[int], tables, ctx, n, row_start, T: int) -> AttnGroup:
        """The group of sequences `idx`: their rows of the step's tensors, cut by index."""
        sel = torch.tensor(idx, device=self.device) if len(idx) < tables.shape[0] else None
        pick = (lambda t: t) if sel is None else (lambda t: t.index_select(0, sel))
        return group_of(pick(tables), pick(ctx), pick(n), pick(row_start), self.bs, self.dtype, T=T)
