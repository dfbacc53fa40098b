"""Exercise 5's solution, without a server: block size against the prefix-cache hit rate.

    .venv/bin/python -m week2_serving.solutions.ex5_block_size
    .venv/bin/python -m week2_serving.solutions.ex5_block_size --prefix-len 200 --block-sizes 1 16 128

Drives the engine's own `BlockManager` (pure Python) with the shared-prefix load: a few
prefixes, each followed by a unique suffix. Only *full* blocks are cached, and a block's key
chains every token before it, so a prompt reuses ⌊shared prefix / block size⌋ blocks: a large
block wastes the prefix's tail, a block of 1 token reuses everything but costs one hash and
one block-table entry per token.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from common.cli import parse
from week2_serving.engine.block_manager import BlockManager
from week2_serving.engine.sequence import Sequence


@dataclass
class BlockSizeConfig:
    """Prefix-cache hit rate per block size on a shared-prefix load."""

    block_sizes: tuple[int, ...] = (1, 16, 128)  # tokens per KV block
    prefix_len: int = 200  # shared prefix, tokens (not a multiple of 16 on purpose)
    suffix_len: int = 16  # unique tokens after the prefix
    num_prefixes: int = 2  # distinct prefixes
    requests_per_prefix: int = 8  # prompts sharing each prefix
    seed: int = 0  # the random token ids

    def __post_init__(self) -> None:
        for name in ("prefix_len", "suffix_len", "num_prefixes", "requests_per_prefix"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if not self.block_sizes or any(
            isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in self.block_sizes
        ):
            raise ValueError(f"block sizes must be positive integers, got {self.block_sizes}")


def prompts(cfg: BlockSizeConfig) -> list[list[int]]:
    rng = random.Random(cfg.seed)
    draw = lambda n: [rng.randrange(2048) for _ in range(n)]  # noqa: E731
    out = []
    for _ in range(cfg.num_prefixes):
        prefix = draw(cfg.prefix_len)
        out += [prefix + draw(cfg.suffix_len) for _ in range(cfg.requests_per_prefix)]
    return out


def hit_rate(block_size: int, batch: list[list[int]]) -> dict:
    """Admit and prefill every prompt in turn (all stay running); the manager's hit rate."""
    longest = max(len(p) for p in batch)
    bm = BlockManager(len(batch) * (longest // block_size + 2), block_size)
    for tokens in batch:
        seq = Sequence(tokens)
        bm.allocate_prefix(seq)
        bm.record_admission(seq)
        bm.allocate_slots(seq, len(seq) - seq.num_computed)
        seq.num_computed = len(seq)  # as if the step computed the rest
        bm.register_full_blocks(seq)
    return {"hit_rate": bm.prefix_hit_rate, "blocks_cached": len(bm.cached)}


def main(cfg: BlockSizeConfig) -> dict:
    batch = prompts(cfg)
    rows = {bs: hit_rate(bs, batch) for bs in cfg.block_sizes}
    for bs, r in rows.items():
        print(f"block size {bs:4}: prefix-cache hit rate {r['hit_rate']:.1%}, "
              f"{r['blocks_cached']} blocks hashed")  # fmt: skip
    return rows


if __name__ == "__main__":
    main(parse(BlockSizeConfig, description=__doc__))
