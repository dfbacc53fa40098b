"""The KV pool: every layer's keys and values for every token slot, allocated once at start.

Shape per layer: (num_slots, Hkv, D), num_slots = num_blocks * block_size; the slot of the
token at position p of a sequence is `block_table[p // bs] * bs + p % bs` (see attention.py).
The block manager decides which blocks a sequence owns; this class only stores the numbers,
writes a step's new K/V into their slots, and copies blocks (copy-on-write of a shared block).

The pool's size in blocks follows from its memory budget and `bytes_per_block`:
2 (K and V) x layers x Hkv x D x bytes per element x block_size.

`QuantizedKVCache` stores K/V in 8 bits (int8 or fp8 e4m3, kv_quant.py) with one float32 scale
per token per head, and attention reads it through `gather` (dequantized in the compute dtype);
`make_kv_cache` picks the class from the --kv-cache-dtype name.
"""

from __future__ import annotations

import torch

from week2_serving.engine.kv_quant import KVFormat, dequantize, get_format, quantize


class PagedKVCache:
    quantized = False  # attention reads `layer(l)` in place; a quantized cache goes by `gather`

    def __init__(
        self,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
        storage: torch.dtype | None = None,  # the pool's element type; None: dtype
    ):
        self.num_blocks, self.block_size, self.dtype = num_blocks, block_size, dtype
        shape = (num_layers, num_blocks * block_size, num_kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=storage or dtype, device=device)
        self.v = torch.zeros(shape, dtype=storage or dtype, device=device)

    @staticmethod
    def bytes_per_block(
        num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, dtype: torch.dtype
    ) -> int:
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * num_layers * num_kv_heads * head_dim * itemsize * block_size

    def layer(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer's pools, (num_slots, Hkv, D) each, as attention reads them."""
        return self.k[layer], self.v[layer]

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the given slots (n,): (n, Hkv, D) each, in the pool's dtype."""
        return self.k[layer].index_select(0, slots), self.v[layer].index_select(0, slots)

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


class QuantizedKVCache(PagedKVCache):
    """K/V codes in 8 bits, (layers, slots, Hkv, D), plus one float32 scale per token per head,
    (layers, slots, Hkv). Writes quantize, `gather` dequantizes to `dtype` (the compute dtype)."""

    quantized = True

    def __init__(
        self,
        fmt: KVFormat,
        num_layers: int,
        num_blocks: int,
        block_size: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        dims = (num_layers, num_blocks, block_size, num_kv_heads, head_dim)
        super().__init__(*dims, dtype, device, storage=fmt.storage)
        self.fmt = fmt
        self.k_scale = torch.zeros(self.k.shape[:-1], dtype=fmt.scale_dtype, device=device)
        self.v_scale = torch.zeros(self.v.shape[:-1], dtype=fmt.scale_dtype, device=device)

    @staticmethod
    def bytes_per_block(
        num_layers: int, num_kv_heads: int, head_dim: int, block_size: int, fmt: KVFormat
    ) -> int:
        """2 (K and V) x layers x Hkv x block_size x (D codes + one scale)."""
        code = torch.empty((), dtype=fmt.storage).element_size()
        scale = torch.empty((), dtype=fmt.scale_dtype).element_size()
        return 2 * num_layers * num_kv_heads * (head_dim * code + scale) * block_size

    def gather(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the given slots (n,), dequantized: (n, Hkv, D) each, in `dtype`."""
        out = []
        for codes, scales in ((self.k, self.k_scale), (self.v, self.v_scale)):
            q = codes[layer].index_select(0, slots)  # (n, Hkv, D) codes
            out.append(dequantize(q, scales[layer].index_select(0, slots), self.dtype))
        return out[0], out[1]

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """This step's K/V (N, Hkv, D) quantized into their slots (N,), scales beside them."""
        for codes, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            q, s = quantize(x, self.fmt)
            # through a byte view: index_copy_ has no fp8 kernel on CPU; the bytes are the same
            codes[layer].view(torch.uint8).index_copy_(0, slots, q.view(torch.uint8))
            scales[layer].index_copy_(0, slots, s)

    def copy_blocks(self, copies: list[tuple[int, int]]) -> None:
        """Copy-on-write: codes and their scales, block src -> block dst, every layer."""
        bs = self.block_size
        for src, dst in copies:
            for t in (self.k, self.v, self.k_scale, self.v_scale):
                t[:, dst * bs : (dst + 1) * bs] = t[:, src * bs : (src + 1) * bs]


def kv_bytes_per_block(
    kv_cache_dtype: str,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    block_size: int,
    dtype: torch.dtype,
) -> int:
    """Bytes of one block for a --kv-cache-dtype ("auto": the model dtype `dtype`)."""
    dims = (num_layers, num_kv_heads, head_dim, block_size)
    if kv_cache_dtype == "auto":
        return PagedKVCache.bytes_per_block(*dims, dtype)
    return QuantizedKVCache.bytes_per_block(*dims, get_format(kv_cache_dtype))


def make_kv_cache(
    kv_cache_dtype: str,
    num_layers: int,
    num_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> PagedKVCache:
    """The pool for a --kv-cache-dtype: "auto" stores the model dtype, int8/fp8 quantize."""
    dims = (num_layers, num_blocks, block_size, num_kv_heads, head_dim, dtype, device)
    if kv_cache_dtype == "auto":
        return PagedKVCache(*dims)
    return QuantizedKVCache(get_format(kv_cache_dtype), *dims)
