"""Paged attention: each sequence's queries attend to its own keys, read from the KV pool
through its block table.

The pool holds token *slots*: slot = block_id * block_size + offset, so the token at position p
of a sequence lives in slot `block_table[p // bs] * bs + p % bs`. Nothing about a sequence needs
to be contiguous: that is what lets the block manager hand out memory one block at a time
(PagedAttention, Kwon et al. 2023).

A step's rows (every scheduled token of every sequence, one flat batch) are split into
attention *groups*: sequences whose attention runs as one padded SDPA call per layer.

Shapes: N tokens this step, H query heads, Hkv K/V heads, D head dim, B sequences in a group,
T queries per sequence, L keys per sequence, M blocks per table.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# How attention reads a quantized KV pool (kv_cache.QuantizedKVCache.gather, one layer bound):
# flat slots (n,) -> K, V (n, Hkv, D) each, dequantized to the compute dtype.
Reader = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def gather_slots(
    block_tables: torch.Tensor,  # (B, M) physical block ids, padded with anything
    ctx_lens: torch.Tensor,  # (B,) keys per sequence (past + this step's tokens)
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pool slot of every key position, and which positions are real: (B, L), (B, L)."""
    # LAB:paged-attention begin
    # HINT: position p of a sequence lives in slot block_table[p // bs] * bs + p % bs.
    # HINT: L = the longest context; positions >= a sequence's ctx_len are not valid: give them
    # HINT: slot 0 (any real slot) and False in `valid`. No Python loop: index with arange(L).
    L = int(ctx_lens.max())
    pos = torch.arange(L, device=block_tables.device)  # (L,)
    blocks = block_tables[:, pos // block_size]  # (B, L) block holding each position
    slots = blocks * block_size + pos % block_size  # (B, L)
    valid = pos[None, :] < ctx_lens[:, None]  # (B, L)
    return slots.masked_fill(~valid, 0), valid
    # LAB:paged-attention end


@dataclass
class AttnGroup:
    """Sequences whose attention runs as one padded SDPA call (per layer)."""

    rows: torch.Tensor  # (B*T,) row of each padded query in the step's flat batch (-1 = pad)
    slots: torch.Tensor  # (B, L) pool slots of each sequence's keys
    mask: torch.Tensor  # (B, 1, T, L) float: 0 where a query may see a key, -inf elsewhere
    B: int
    T: int
    padded: bool  # some queries are padding (rows == -1)


def make_group(
    block_tables: list[list[int]],
    ctx_lens: list[int],
    q_lens: list[int],
    row_starts: list[int],
    block_size: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> AttnGroup:
    M = max(len(t) for t in block_tables)
    bt = torch.tensor([t + [0] * (M - len(t)) for t in block_tables], device=device)  # (B, M)
    as_tensor = lambda xs: torch.tensor(xs, device=device)  # noqa: E731
    return group_of(
        bt, as_tensor(ctx_lens), as_tensor(q_lens), as_tensor(row_starts), block_size, dtype
    )


def group_of(
    bt: torch.Tensor,  # (B, M) block tables, padded with anything
    ctx: torch.Tensor,  # (B,) keys per sequence
    ql: torch.Tensor,  # (B,) queries per sequence this step
    row_starts: torch.Tensor,  # (B,) row of each sequence's first query in the flat batch
    block_size: int,
    dtype: torch.dtype = torch.float32,
    T: int | None = None,  # max(ql), when the caller knows it (saves a device sync)
) -> AttnGroup:
    """The group of these sequences, from tensors: the slots and the causal mask."""
    device = bt.device
    B, T = bt.shape[0], int(ql.max()) if T is None else T
    slots, valid = gather_slots(bt, ctx, block_size)  # (B, L)
    L = slots.shape[1]
    t = torch.arange(T, device=device)
    q_pos = (ctx - ql)[:, None] + t[None, :]  # (B, T) absolute position of each query
    causal = torch.arange(L, device=device)[None, None, :] <= q_pos[:, :, None]  # (B, T, L)
    mask = causal & valid[:, None, :]
    pad_q = t[None, :] >= ql[:, None]  # (B, T) padding queries: let them see all real keys
    mask = torch.where(pad_q[:, :, None], valid[:, None, :], mask)
    rows = row_starts[:, None] + t[None, :]  # (B, T)
    rows = rows.masked_fill(pad_q, -1).flatten()
    # in the queries' dtype: SDPA refuses a float mask of another dtype
    additive = torch.zeros(mask.shape, dtype=dtype, device=device).masked_fill(~mask, float("-inf"))
    padded = bool(pad_q.any()) if T > 1 else False  # T == 1: every sequence has its one query
    return AttnGroup(rows=rows, slots=slots, mask=additive[:, None], B=B, T=T, padded=padded)


def gather_kv(
    pool: torch.Tensor,  # (num_slots, Hkv, D)
    slots: torch.Tensor,  # (B, L)
) -> torch.Tensor:  # (B, Hkv, L, D): a copy, in the layout SDPA reads
    B, L = slots.shape
    flat = slots.flatten()  # index_select on a flat index: several times faster than pool[slots]
    return pool.index_select(0, flat).view(B, L, *pool.shape[1:]).transpose(1, 2)


def paged_attention(
    q: torch.Tensor,  # (B, T, H, D)
    k_pool: torch.Tensor | None,  # (num_slots, Hkv, D)
    v_pool: torch.Tensor | None,  # (num_slots, Hkv, D)
    slots: torch.Tensor,  # (B, L)
    mask: torch.Tensor,  # (B, 1, T, L) bool (True = may see) or float (added to the scores)
    read: Reader | None = None,  # a quantized pool: slots -> dequantized K/V (pools unused)
) -> torch.Tensor:  # (B, T, H, D)
    # LAB:paged-attention begin
    # HINT: read K and V at the slots: gather_kv(pool, slots) -> (B, Hkv, L, D) each, or with
    # HINT: `read` (a quantized pool) read(slots.flatten()) -> (B*L, Hkv, D), reshaped the same.
    # HINT: SDPA wants (B, H, T, D) queries: transpose, pass the mask, enable_gqa=True (the
    # HINT: Hkv < H case), and transpose the output back to (B, T, H, D).
    if read is None:
        k, v = gather_kv(k_pool, slots), gather_kv(v_pool, slots)  # (B, Hkv, L, D) each
    else:  # a quantized pool: K/V of these slots, dequantized, in the queries' dtype
        B, L = slots.shape
        k, v = read(slots.flatten())  # (B*L, Hkv, D) each
        k = k.view(B, L, *k.shape[1:]).transpose(1, 2)  # (B, Hkv, L, D)
        v = v.view(B, L, *v.shape[1:]).transpose(1, 2)  # (B, Hkv, L, D)
    y = F.scaled_dot_product_attention(
        q.transpose(1, 2), k, v, attn_mask=mask, enable_gqa=True
    )  # (B, H, T, D)
    return y.transpose(1, 2)
    # LAB:paged-attention end


def plan_groups(
    decode: list[tuple],
    prefill: list[tuple],
    block_size: int,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> list[AttnGroup]:
    """Each item is (block_table, ctx_len, q_len, row_start). Decodes run as padded groups of
    similar context length (padding every decode to the longest context would make one long
    request slow down the whole batch); each prefill chunk is a group of its own."""
    buckets: dict[int, list] = {}
    for d in decode:  # bucket by the power of two of the context length: <= 2x padding
        buckets.setdefault(d[1].bit_length(), []).append(d)
    groups = [make_group(*zip(*b), block_size, device, dtype) for _, b in sorted(buckets.items())]
    return groups + [make_group(*zip(p), block_size, device, dtype) for p in prefill]


def attend(
    q: torch.Tensor,  # (N, H, D) this step's queries, one row per scheduled token
    k_pool: torch.Tensor | None,  # (num_slots, Hkv, D) one layer's keys
    v_pool: torch.Tensor | None,  # (num_slots, Hkv, D)
    groups: list[AttnGroup],
    read: Reader | None = None,  # a quantized pool's reader (then the pools are unused)
) -> torch.Tensor:  # (N, H, D)
    """Every row's attention over its own sequence's keys in the pool."""
    N, H, D = q.shape
    if len(groups) == 1 and groups[0].rows.numel() == N and not groups[0].padded:
        g = groups[0]  # one group holding every row in order (e.g. all decodes)
        return paged_attention(
            q.view(g.B, g.T, H, D), k_pool, v_pool, g.slots, g.mask, read
        ).reshape(N, H, D)
    out = q.new_empty(N, H, D)
    for g in groups:  # gather each group's queries, attend, scatter outputs back
        if not g.padded:
            qg = q.index_select(0, g.rows).view(g.B, g.T, H, D)
            y = paged_attention(qg, k_pool, v_pool, g.slots, g.mask, read)
            out.index_copy_(0, g.rows, y.reshape(g.B * g.T, H, D))
            continue
        real = g.rows >= 0
        qg = q.new_zeros(g.B * g.T, H, D)
        qg[real] = q[g.rows[real]]
        y = paged_attention(qg.view(g.B, g.T, H, D), k_pool, v_pool, g.slots, g.mask, read)
        out[g.rows[real]] = y.reshape(g.B * g.T, H, D)[real]
    return out
