"""The LoRA delta of a mixed batch, `s[i] * (x[i] A[idx[i]]) B[idx[i]]` for every row i, in one
pass over the step (Punica, Chen et al. 2023; vLLM's punica kernels), in plain PyTorch.

The adapters' weights are stacked into slots: A (S, in, R), B (S, R, out), s (S,); slot 0 is
the base model (zeros: it adds nothing). Each row of the step names its slot. Two shapes of the
same computation, for the two kinds of rows a step holds:

- BGMV (batched gather matrix-vector), for decode rows, one row per sequence and any mix of
  adapters: gather each row's A and B and run one batched matmul (`bmm`) for all rows;
- SGMV (segmented gather matrix-matrix), for prefill chunks, many consecutive rows of one
  sequence share one adapter: one pair of matmuls per segment, with the adapter's A and B as is.

`lora_reference` is the definition, row by row; the tests check both against it.
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


def segments_of(idx: list[int]) -> list[tuple[int, int, int]]:
    """Runs of equal slots in a row -> slot list: [0, 0, 2, 2, 1] -> [(0,2,0), (2,4,2), (4,5,1)]."""
    segs: list[tuple[int, int, int]] = []
    for i, s in enumerate(idx):
        if segs and segs[-1][2] == s and segs[-1][1] == i:
            segs[-1] = (segs[-1][0], i + 1, s)
        else:
            segs.append((i, i + 1, s))
    return segs
