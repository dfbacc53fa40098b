"""The KV pool: every layer's keys and values for every token slot, allocated once at start.

Shape per layer: (num_slots, Hkv, D), num_slots = num_blocks * block_size; the slot of the
token at position p of a sequence is `block_table[p // bs] * bs + p % bs` (see attention.py).
The block manager decides which blocks a sequence owns; this class only stores the numbers,
writes a step's new K/V into their slots, and copies blocks (copy-on-write of a shared block).

The pool's size in blocks follows from its memory budget and `bytes_per_block`:
2 (K and V) x layers x Hkv x D x bytes per element x block_size.
"""

from __future__ import annotations

import torch


class PagedKVCache:
    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        self.num_blocks, self.block_size, self.dtype = num_blocks, block_size, dtype
        shape = (num_layers, num_blocks * block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    @staticmethod
    def bytes_per_block(
        num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
    ) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * num_kv_heads * head_dim * itemsize * block_size

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's pools, (num_slots, Hkv, D) each, as attention reads them."""
        return self.k[layer], self.v[layer]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """This step's K/V (N, Hkv, D) into their slots (N,)."""
        self.k[layer].index_copy_(0, slots, k)
        self.v[layer].index_copy_(0, slots, v)

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: block src -> block dst, every layer at once."""
        bs = self.block_size
        for src, dst in copies:
            self.k[:, dst * bs : (dst + 1) * bs] = self.k[:, src * bs : (src + 1) * bs]
            self.v[:, dst * bs : (dst + 1) * bs] = self.v[:, src * bs : (src + 1) * bs]
