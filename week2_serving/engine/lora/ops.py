"""The LoRA delta of a mixed batch, `s[i] * (x[i] A[idx[i]]) B[idx[i]]` for every row i, in one
pass over the step (Punica, Chen et al. 2023; vLLM's punica kernels), in plain PyTorch.

The adapters' weights are stacked into slots: A (S, in, R), B (S, R, out), s (S,); slot 0 is
the base model (zeros: it adds nothing). Each row of the step names its slot. Two shapes of the
same computation, for the two kinds of rows a step holds:

- BGMV (batched gather matrix-vector), for decode rows, one row per sequence and any mix of
  adapters: gather each row's A and B and run one batched matmul (`bmm`) for all rows;
- SGMV (segmented gather matrix-matrix), for prefill chunks, many consecutive rows of one
  sequence share one adapter: one pair of matmuls per segment, with the adapter's A and B as is.

On a CPU every tensor op has a fixed cost, and a small model's projections are small, so the
number of ops decides the price more than the flops do. `add_grouped` is what the engine runs
when a step holds few distinct adapters (the common case): one matmul pair per adapter over all
of its rows, prefill and decode alike, added into the projection's output in place (on a slice
when the rows are consecutive, by `index_add_` when they are not) — a step of one adapter costs
three ops per projection, with no gather at all. `groups_of` builds its groups.

`lora_reference` is the definition, row by row; the tests check all three against it.
Shapes: N rows, in / out the projection's widths, R the slot rank, S slots, G segments.
"""

from __future__ import annotations

import torch


def lora_reference(
    x: torch.Tensor,  # (N, in)
    A: torch.Tensor,  # (S, in, R)
    B: torch.Tensor,  # (S, R, out)
    scales: torch.Tensor,  # (S,)
    idx: torch.Tensor,  # (N,) slot of each row
) -> torch.Tensor:  # (N, out)
    """Row by row: the definition the fast versions must match."""
    out = x.new_zeros(x.shape[0], B.shape[-1])
    for i in range(x.shape[0]):
        s = int(idx[i])
        out[i] = scales[s] * ((x[i] @ A[s]) @ B[s])
    return out


def bgmv(
    x: torch.Tensor,  # (N, in)
    A: torch.Tensor,  # (S, in, R)
    B: torch.Tensor,  # (S, R, out)
    scales: torch.Tensor,  # (S,)
    idx: torch.Tensor,  # (N,) slot of each row
) -> torch.Tensor:  # (N, out)
    """Gather each row's adapter, then one batched shrink (in -> R) and expand (R -> out)."""
    v = torch.bmm(x[:, None, :], A[idx])  # (N, 1, R)
    y = torch.bmm(v, B[idx])[:, 0]  # (N, out)
    return y * scales[idx, None]


def sgmv(
    x: torch.Tensor,  # (N, in)
    A: torch.Tensor,  # (S, in, R)
    B: torch.Tensor,  # (S, R, out)
    scales: torch.Tensor,  # (S,)
    segments: list[tuple[int, int, int]],  # (start, end, slot): rows start..end-1 use slot
    out: torch.Tensor | None = None,  # (N, out) added to in place; None: zeros
) -> torch.Tensor:  # (N, out)
    """Per segment of consecutive rows with one adapter: (x[seg] A[slot]) B[slot] * s[slot].

    Rows outside every segment are left as they were (zero for a fresh `out`)."""
    if out is None:
        out = x.new_zeros(x.shape[0], B.shape[-1])
    for start, end, slot in segments:
        out[start:end] += scales[slot] * ((x[start:end] @ A[slot]) @ B[slot])
    return out


Group = tuple[int, "slice | torch.Tensor", float]  # (slot, its rows, its scale)


def add_grouped(
    y: torch.Tensor,  # (N, out) the projection's output, added to in place
    x: torch.Tensor,  # (N, in)
    A: torch.Tensor,  # (S, in, R)
    B: torch.Tensor,  # (S, R, out)
    groups: list[Group],  # one per adapter: its rows (a slice, or (n,) row indices), its scale
) -> torch.Tensor:  # y, with every group's s (x A) B added
    """One shrink and one expand per adapter, whatever mix of prefill and decode rows it has.

    The matmuls run in A's dtype (x is cast to it; the engine keeps adapters in float32 on a
    CPU) and the delta is added into y in y's dtype."""
    x = x.to(A.dtype)  # a no-op when the dtypes agree
    for slot, rows, scale in groups:
        if isinstance(rows, slice):  # consecutive rows: views, no copy
            y[rows].add_((x[rows] @ A[slot]) @ B[slot], alpha=scale)
        else:
            d = (x.index_select(0, rows) @ A[slot]) @ B[slot]  # (n, out)
            y.index_add_(0, rows, d.to(y.dtype), alpha=scale)
    return y


def groups_of(idx: torch.Tensor, scales: list[float]) -> list[Group]:
    """Each slot present in `idx` (N,) with its rows: a slice when they are consecutive.

    groups_of(tensor([2, 2, 1, 2]), s) -> [(1, slice(2, 3), s[1]), (2, tensor([0, 1, 3]), s[2])]"""
    groups: list[Group] = []
    for slot in torch.unique(idx).tolist():  # a few distinct slots: a loop per adapter, not row
        rows = (idx == slot).nonzero().flatten()  # (n,)
        first, last = int(rows[0]), int(rows[-1])
        span = slice(first, last + 1) if last - first + 1 == rows.numel() else rows
        groups.append((slot, span, float(scales[slot])))
    return groups


def segments_of(idx: list[int]) -> list[tuple[int, int, int]]:
    """Runs of equal slots in a row -> slot list: [0, 0, 2, 2, 1] -> [(0,2,0), (2,4,2), (4,5,1)]."""
    segs: list[tuple[int, int, int]] = []
    for i, s in enumerate(idx):
        if segs and segs[-1][2] == s and segs[-1][1] == i:
            segs[-1] = (segs[-1][0], i + 1, s)
        else:
            segs.append((i, i + 1, s))
    return segs
