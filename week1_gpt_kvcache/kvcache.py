"""The KV cache: keys and values of every past token, per layer, so each new token costs O(T).

Without a cache, generating token t recomputes K and V for all t previous tokens in every
layer: O(t) work per layer for the projections plus O(t²) for attention, and O(T³) in total
over T tokens. With a cache, step t computes K/V for one token, appends them, and attends over
the t stored ones: O(t) per step, O(T²) in total.

Memory: 2 (K and V) · n_layer · n_kv_head · head_dim · bytes_per_element · T · B.
Grouped-query attention (n_kv_head < n_head) shrinks it by n_head / n_kv_head.
"""

from __future__ import annotations

import torch


def kv_cache_bytes(
    n_layer: int, n_kv_head: int, head_dim: int, seq_len: int, batch: int, bytes_per_element: int
) -> int:
    """2 · layers · n_kv_head · head_dim · bytes · T · B."""
    # LAB:kvcache begin
    # HINT: K and V, for every layer, K/V head, head dimension, token and sequence.
    return 2 * n_layer * n_kv_head * head_dim * bytes_per_element * seq_len * batch
    # LAB:kvcache end


class KVCache:
    """Preallocated (n_layer, B, Hkv, max_len, D) buffers for K and V, filled left to right.

    All sequences of the batch share one timeline of slots (prompts are left-padded), so one
    `length` says how many slots are filled. A model's forward calls `update` once per layer
    with the new keys/values, then `advance` once.
    """

    def __init__(
        self,
        n_layer: int,
        batch_size: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        shape = (n_layer, batch_size, n_kv_head, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.max_len = max_len
        self.length = 0  # filled slots

    def update(
        self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store (B, Hkv, T, D) new keys/values after the filled slots; return all (B, Hkv, S, D)."""
        # LAB:kvcache begin
        # HINT: write k_new / v_new into slots [self.length, self.length + T) of `layer`.
        # HINT: refuse (ValueError) to go past self.max_len; do not advance self.length here.
        # HINT: return views of the filled slots 0 .. length + T: shape (B, Hkv, S, D).
        T = k_new.shape[2]
        end = self.length + T
        if end > self.max_len:
            raise ValueError(
                f"KV cache is full: {self.length} slots used + {T} new > max_len={self.max_len}; "
                "allocate a longer cache (up to the model's block_size) or generate fewer tokens"
            )
        self.k[layer, :, :, self.length : end] = k_new
        self.v[layer, :, :, self.length : end] = v_new
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
        # LAB:kvcache end

    def advance(self, n: int) -> None:
        self.length += n

    def reset(self) -> None:
        self.length = 0

    @property
    def allocated_bytes(self) -> int:
        return self.k.nbytes + self.v.nbytes

    @property
    def used_bytes(self) -> int:
        return self.allocated_bytes * self.length // self.max_len
