"""The paged KV cache's bookkeeping: fixed-size blocks, a free list, reference counts.

The KV cache is one big pool of `num_blocks` blocks of `block_size` token slots each (the
tensors live in the model runner; this class only hands out block ids). A sequence's
`block_table` maps its logical block i (tokens i*bs .. i*bs+bs-1) to a physical block, the way
a page table maps virtual pages to frames. So a sequence needs memory only for the tokens it
has, one block at a time, instead of a max-length reservation made up front.

Automatic prefix caching: a *full* block is named by a key, the SHA-256 of (the key of the
block before it, its tokens), so one key names the whole prefix up to that block and equal
keys mean equal prefixes. A new request walks its full blocks, and each one already in the
cache is shared (reference count + 1) instead of recomputed. Freed blocks keep their contents
and key while they sit in the free list; they are reused by whoever needs a new block,
oldest-freed first (LRU eviction), and only then forget the key.

Why SHA-256 and not Python's `hash()`: two different prefixes with the same key would share
K/V and silently give one request another's context. `hash()` of a tuple is 64 bits, chosen
for speed, not to resist collisions (and some are easy to build); a 256-bit cryptographic hash
makes an accidental or crafted collision out of reach, as vLLM's `sha256` prefix hashing does.
A request may carry a `cache_salt` (as in vLLM): it enters the first block's key, so requests
with different salts never share a block (tenants that must not learn, from timing, what
others have sent), and requests with the same salt share as usual.

Copy-on-write: a block whose reference count is > 1 is shared, so it must not be written. If a
sequence must write into one (it found its whole prompt cached and recomputes the last token
to get logits), it gets a private copy first; the copy itself is done by the model runner,
from the (src, dst) pairs this class returns.

Pure Python, no torch.
"""

from __future__ import annotations

import hashlib
import struct
from collections import OrderedDict
from dataclasses import dataclass

from week2_serving.engine.sequence import Sequence


@dataclass
class Block:
    block_id: int
    ref_count: int = 0
    hash: bytes | None = None  # its prefix-cache key, once full and registered in the cache


class BlockError(RuntimeError):
    """Bookkeeping went wrong (double free, unknown block): a bug, never a user error."""


def block_key(parent: bytes | None, tokens: tuple[int, ...] | list[int], salt: str | None) -> bytes:
    """The prefix-cache key of a full block: SHA-256 over (parent key, the block's tokens).

    The first block has no parent; its place is taken by the salt's own digest (or 32 zero
    bytes without a salt), so the salt changes every key of the chain. Tokens are packed as
    fixed-width int64, so two different token tuples never give the same bytes.
    """
    if parent is None:
        parent = bytes(32) if salt is None else hashlib.sha256(b"salt:" + salt.encode()).digest()
    return hashlib.sha256(parent + struct.pack(f"<{len(tokens)}q", *tokens)).digest()


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"num_blocks={num_blocks} and block_size={block_size} must be >= 1")
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # ref_count == 0 blocks, least recently freed first. Blocks with a key are "cached":
        # reusable by a prefix hit until something evicts them.
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self.cached: dict[bytes, int] = {}  # prefix-cache key -> block_id
        self.prefix_queries = 0  # prompt tokens looked up in the prefix cache
        self.prefix_hits = 0  # of which found
        self.num_evictions = 0

    # --- accounting -----------------------------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - len(self.free)

    @property
    def num_cached_free_blocks(self) -> int:
        """Free blocks that still hold a cached prefix (evictable)."""
        return sum(1 for b in self.free if self.blocks[b].hash is not None)

    @property
    def prefix_hit_rate(self) -> float:
        return self.prefix_hits / self.prefix_queries if self.prefix_queries else 0.0

    def blocks_needed(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)  # ceil

    # --- allocation -----------------------------------------------------------------------------
    def _take_free(self, block_id: int) -> Block:
        del self.free[block_id]
        block = self.blocks[block_id]
        block.ref_count = 1
        return block

    def _new_block(self) -> int:
        """The least recently freed block, its old cached prefix (if any) evicted."""
        block_id = next(iter(self.free))
        block = self._take_free(block_id)
        if block.hash is not None:
            del self.cached[block.hash]
            block.hash = None
            self.num_evictions += 1
        return block_id

    def allocate_prefix(self, seq: Sequence) -> int:
        """On admission: share every leading full block already cached; return tokens reused.

        At least the last token is always left to compute, because its logits are needed to
        sample the next token.
        """
        if seq.block_table or seq.num_computed:
            raise BlockError(f"{seq} already has blocks; allocate_prefix is for admission")
        # LAB:block-manager begin
        # HINT: walk seq's full blocks in order; key each: block_key(parent key, its tokens, salt).
        # HINT: a key in self.cached is shared: take it from the free list if its ref_count is 0
        # HINT: (self._take_free), else ref_count += 1; append it to block_table and block_hashes.
        # HINT: stop at the first miss; without prefix caching nothing is shared. Leave at least the
        # HINT: last token to compute (its logits are needed): num_computed = min(matched, len - 1).
        matched = 0
        if self.enable_prefix_caching:
            parent = None
            bs = self.block_size
            for start in range(0, len(seq) - bs + 1, bs):
                h = block_key(parent, seq.tokens[start : start + bs], seq.cache_salt)
                block_id = self.cached.get(h)
                if block_id is None:
                    break
                block = self.blocks[block_id]
                if block.ref_count == 0:
                    self._take_free(block_id)
                else:
                    block.ref_count += 1
                seq.block_table.append(block_id)
                seq.block_hashes.append(h)
                matched += bs
                parent = h
        seq.num_computed = min(matched, len(seq) - 1)
        return seq.num_computed
        # LAB:block-manager end

    def record_admission(self, seq: Sequence) -> None:
        """Count a newly admitted prompt for the hit rate (once: not again after preemption)."""
        if seq.num_preemptions == 0:
            self.prefix_queries += seq.num_prompt_tokens
            seq.num_cached_prompt = min(seq.num_computed, seq.num_prompt_tokens)
            self.prefix_hits += seq.num_cached_prompt

    def _slots_plan(self, seq: Sequence, num_new: int) -> tuple[list[int], int]:
        """Which of seq's blocks it would write while shared, and how many free blocks it needs."""
        bs = self.block_size
        first, end = seq.num_computed, seq.num_computed + num_new  # token slots to write
        written = range(first // bs, min(self.blocks_needed(end), len(seq.block_table)))
        shared = [i for i in written if self.blocks[seq.block_table[i]].ref_count > 1]
        return shared, max(0, self.blocks_needed(end) - len(seq.block_table)) + len(shared)

    def can_allocate_slots(self, seq: Sequence, num_new: int) -> bool:
        """Are there free blocks enough to compute `num_new` more tokens of `seq`?"""
        return self._slots_plan(seq, num_new)[1] <= len(self.free)

    def allocate_slots(self, seq: Sequence, num_new: int) -> list[tuple[int, int]]:
        """Make room to compute `num_new` more tokens of `seq` (ask `can_allocate_slots` first).

        Returns the (src, dst) block copies the runner must do first (copy-on-write).
        """
        # LAB:block-manager begin
        # HINT: self._slots_plan(seq, num_new) says which blocks are shared and how many free blocks
        # HINT: are needed; refuse (BlockError) if the free list is too short.
        # HINT: copy-on-write: each shared block i gets a private self._new_block(); the old loses
        # HINT: a reference; record (src, dst). Then append new blocks until the table covers
        # HINT: num_computed + num_new tokens. Return the copies.
        shared, need = self._slots_plan(seq, num_new)
        if need > len(self.free):
            raise BlockError(f"{seq} needs {need} free blocks, {len(self.free)} are free")
        copies = []
        for i in shared:  # copy-on-write: a private copy of a block someone else also reads
            src = seq.block_table[i]
            dst = self._new_block()
            self.blocks[src].ref_count -= 1
            seq.block_table[i] = dst
            copies.append((src, dst))
        while len(seq.block_table) < self.blocks_needed(seq.num_computed + num_new):
            seq.block_table.append(self._new_block())
        return copies
        # LAB:block-manager end

    def reserve_next_slot(self, seq: Sequence) -> bool:
        """Overlap scheduling (overlap.py): while a decode's token is computed, the slot of the
        token after it, one step early. False, with nothing allocated, when that would need a
        copy-on-write or more blocks than are free (the next step is then scheduled as usual).
        A reserved block is one the next step would allocate anyway, and it is freed with the
        sequence if the sequence finishes instead."""
        shared, need = self._slots_plan(seq, 2)  # the slot being written now and the next
        if shared or need > len(self.free):
            return False
        self.allocate_slots(seq, 2)
        return True

    def register_full_blocks(self, seq: Sequence) -> None:
        """After a step: name every block that is now full of computed tokens by its key."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        for i in range(len(seq.block_hashes), seq.num_computed // bs):  # newly full blocks only
            block = self.blocks[seq.block_table[i]]
            parent = seq.block_hashes[-1] if seq.block_hashes else None
            h = block_key(parent, seq.tokens[i * bs : (i + 1) * bs], seq.cache_salt)
            if block.hash is None and h not in self.cached:
                block.hash = h
                self.cached[h] = block.block_id
            seq.block_hashes.append(h)

    def truncate(self, seq: Sequence, num_tokens: int) -> None:
        """Keep only the blocks holding seq's first `num_tokens` slots; free the rest.

        Speculative decoding reserves slots for proposed tokens; the rejected ones are rolled
        back here. Those blocks never held only computed tokens, so none has a prefix key.
        """
        keep = self.blocks_needed(num_tokens)
        for block_id in reversed(seq.block_table[keep:]):
            block = self.blocks[block_id]
            if block.hash is not None or block.ref_count <= 0:
                raise BlockError(f"truncating block {block_id} of {seq}: cached or free")
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
                self.free.move_to_end(block_id, last=False)  # no prefix: reused first
        del seq.block_table[keep:]

    def free_seq(self, seq: Sequence) -> None:
        """Release a sequence's blocks (finished, aborted or preempted).

        The tail goes into the free list before the head, so under pressure the end of a
        sequence is evicted before the prefix other requests are most likely to share; blocks
        with no cached prefix go to the front, to be reused first.
        """
        # LAB:block-manager begin
        # HINT: walk the table tail first; a block at ref_count <= 0 is a double free (BlockError).
        # HINT: drop one reference; at 0 the block joins the free list (its end), or its front when
        # HINT: it holds no cached prefix (reused first). Then empty the table and hashes and set
        # HINT: num_computed to 0.
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            if block.ref_count <= 0:
                raise BlockError(f"double free of block {block_id} by {seq}")
            block.ref_count -= 1
            if block.ref_count == 0:
                self.free[block_id] = None
                if block.hash is None:
                    self.free.move_to_end(block_id, last=False)
        seq.block_table, seq.block_hashes = [], []
        seq.num_computed = 0
        # LAB:block-manager end

    # --- checks (tests call this after every operation) ----------------------------------------
    def check_invariants(self, live: list[Sequence]) -> None:
        refs = [0] * self.num_blocks
        for seq in live:
            if len(set(seq.block_table)) != len(seq.block_table):
                raise BlockError(f"{seq} holds a block twice")
            for b in seq.block_table:
                refs[b] += 1
        for block in self.blocks:
            if block.ref_count != refs[block.block_id]:
                raise BlockError(
                    f"block {block.block_id}: ref_count {block.ref_count}, held by "
                    f"{refs[block.block_id]} sequences"
                )
            if (block.ref_count == 0) != (block.block_id in self.free):
                raise BlockError(f"block {block.block_id}: free list disagrees with ref_count")
        for h, b in self.cached.items():
            if self.blocks[b].hash != h:
                raise BlockError(f"cache entry {h.hex()} points to block {b} with another key")
