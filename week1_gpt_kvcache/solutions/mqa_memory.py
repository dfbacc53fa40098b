"""Exercise 2 (week 1), worked: how much KV-cache memory fewer K/V heads save.

    .venv/bin/python -m week1_gpt_kvcache.solutions.mqa_memory

The cache holds K and V for every layer, K/V head, head dimension, token and sequence, so its
size is linear in `n_kv_head`: MHA (4 heads, as many as the queries) -> GQA (2) -> MQA (1)
halves it at each step. The query heads and the weights barely change (only `wk` and `wv`
shrink), which is why GQA is the default of every recent open model. The script prints the
table for the `cpu` size; train the MQA model with `train --n-kv-head 1` for the loss side.
"""

from __future__ import annotations

from week1_gpt_kvcache.kvcache import kv_cache_bytes
from week1_gpt_kvcache.model import SIZES

MIB = 2**20


def cache_mib(n_kv_head: int, seq_len: int, batch: int, size: str = "cpu") -> float:
    """fp32 KV-cache size in MiB of the `size` model with `n_kv_head` K/V heads."""
    dims = SIZES[size]
    head_dim = dims["n_embd"] // dims["n_head"]
    return kv_cache_bytes(dims["n_layer"], n_kv_head, head_dim, seq_len, batch, 4) / MIB


def main() -> dict[int, tuple[float, float]]:
    rows = {}
    print("n_kv_head | batch 1 x 512 | batch 8 x 1,024")
    for heads in (4, 2, 1):
        rows[heads] = (cache_mib(heads, 512, 1), cache_mib(heads, 1024, 8))
        print(f"{heads:9d} | {rows[heads][0]:9.1f} MiB | {rows[heads][1]:11.1f} MiB")
    return rows


if __name__ == "__main__":
    main()
