"""CUDA graphs for decode steps: record a step's kernels once, replay them with one launch.

A decode step of a small model is dozens of tiny kernels per layer (norms, projections of one
row per sequence, RoPE, the KV write, attention), each taking a few microseconds on the GPU,
and the CPU needs about as long again to *launch* each one from Python. So the GPU waits on
the CPU: the step costs the launches, not the math. A CUDA graph records the kernels of one
forward pass once (`torch.cuda.CUDAGraph`) and replays the whole sequence with one launch.

What a graph needs, and how this module gives it:
- fixed shapes and fixed memory: a graph replays the same kernels on the same addresses. So
  each graph owns STATIC input buffers (token ids, positions, the slot each row's K/V goes
  to, block tables, context lengths) that a step fills with `copy_`, and its output (the
  logits) is a static tensor too. The batch is padded to a bucket of sizes (1, 2, 4, 8, ...,
  max_num_seqs, like vLLM's capture sizes) and the keys to a bucket of context lengths.
- attention of fixed shape: the eager path groups decodes by context length and cuts them out
  by index (attention.py); here every row of the bucket reads a (max blocks) block table and
  attends over all L = blocks x block_size keys, with the keys past its context masked out.
- padding rows that harm nobody: a padding row writes its K/V to a SCRATCH block that the
  block manager never hands out (one block added to the end of the pool), and attends to that
  block's first slot only, so no real sequence's KV is ever touched.
- no host syncs inside: everything the graph computes comes from the static buffers.

Only plain decode steps take this path (every sequence computes one token and samples it),
with at most max_num_seqs sequences and contexts up to `max_seq_len_to_capture` (vLLM's old
flag); prefill and mixed steps, LoRA, speculative decoding and 8-bit KV caches run eager.
Graphs are captured lazily, the first time a (batch, context) bucket is seen.

On CPU graphs are off (`make_decode_graphs` gives None): there is no launch overhead to save.
The logic is testable there anyway: `EagerGraph` is a stand-in with the same `capture(fn)` /
`replay()` pair that calls `fn` over the same static buffers, so a CPU test proves that the
padding, the buckets, the static-buffer copies and the scratch block give the eager tokens.

Shapes: B rows (the bucket, real + padding), M blocks per table, L = M x block_size keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from week2_serving.engine.attention import AttnGroup
from week2_serving.engine.kv_cache import PagedKVCache
from week2_serving.engine.model_runner import ModelRunner, StepInputs
from week2_serving.engine.scheduler import ScheduledBatch


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Batch buckets: the powers of two below max_num_seqs, then max_num_seqs itself."""
    if isinstance(max_num_seqs, bool) or not isinstance(max_num_seqs, int) or max_num_seqs < 1:
        raise ValueError(f"max_num_seqs={max_num_seqs!r}: use an integer >= 1")
    sizes = [1 << i for i in range(max_num_seqs.bit_length()) if 1 << i < max_num_seqs]
    return sizes + [max_num_seqs]


def pick_bucket(n: int, sizes: list[int]) -> int | None:
    """The smallest bucket holding n rows; None when n is larger than every bucket (eager)."""
    return next((s for s in sizes if s >= n), None)


def blocks_bucket(max_ctx: int, block_size: int) -> int:
    """Blocks per table a graph covers for a longest context of max_ctx keys: the power of two
    at or above ceil(max_ctx / block_size), so a growing context re-captures only log times."""
    need = -(-max_ctx // block_size)
    return 1 << (need - 1).bit_length()


class EagerGraph:
    """The CPU stand-in for a CUDA graph: `replay` calls `fn` again over the same static
    buffers and copies its result into the static output, as a replayed graph leaves it."""

    def capture(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        self.fn = fn
        self.out = fn()
        return self.out

    def replay(self) -> torch.Tensor:
        self.out.copy_(self.fn())
        return self.out


class CudaGraph:
    """`fn` recorded into a `torch.cuda.CUDAGraph`; all graphs share one memory pool (they
    never run at once, and each one's output stays referenced, so none overwrites another's)."""

    def __init__(self, pool: tuple, device: torch.device) -> None:
        self.pool, self.device = pool, device

    def capture(self, fn: Callable[[], torch.Tensor]) -> torch.Tensor:
        with torch.cuda.device(self.device):  # the engine's GPU (cuda:N), not the current one
            side = torch.cuda.Stream()  # warm-up off the main stream, as torch's recipe does:
            side.wait_stream(torch.cuda.current_stream())  # lazy inits (cuBLAS handles) happen
            with torch.cuda.stream(side):  # before capture, not inside it
                for _ in range(2):
                    fn()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, pool=self.pool):
                self.out = fn()
        return self.out

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.out


@dataclass
class StaticDecode:
    """One captured (batch, blocks) bucket: its static inputs, its graph and its output."""

    per_row: torch.Tensor  # (4, B) long: token id, position, KV slot, context length
    tables: torch.Tensor  # (B, M) long: block tables, padded with the scratch block
    key_pos: torch.Tensor  # (L,) long: 0..L-1, the key positions every row may read
    rows: torch.Tensor  # (B,) long: 0..B-1, every row is sampled
    graph: EagerGraph | CudaGraph
    out: torch.Tensor | None = None  # (B, V) logits, written by every replay


class DecodeGraphs:
    """Runs eligible decode steps of `runner` through captured graphs (see the module doc).

    Adds one scratch block to the end of the runner's KV pool: build it before any step."""

    def __init__(
        self,
        runner: ModelRunner,
        max_num_seqs: int,
        max_seq_len_to_capture: int,
        make_graph: Callable[[], EagerGraph | CudaGraph] = EagerGraph,
    ) -> None:
        if runner.kv.quantized:
            raise ValueError("decode graphs cover the plain KV pool, not an 8-bit one")
        self.runner, self.make_graph = runner, make_graph
        self.sizes = capture_sizes(max_num_seqs)
        self.max_ctx = max_seq_len_to_capture
        c, bs = runner.cfg, runner.block_size
        self.scratch = runner.num_blocks  # the block id past the block manager's last
        runner.kv = None  # rebuilt one block larger: free the old pool first, never hold two
        if torch.device(runner.device).type == "cuda":
            torch.cuda.empty_cache()
        runner.kv = PagedKVCache(
            c.num_layers, runner.num_blocks + 1, bs, c.num_kv_heads, c.head_dim,
            runner.dtype, runner.device,
        )  # fmt: skip
        self.graphs: dict[tuple[int, int], StaticDecode] = {}
        self.num_replays = 0  # steps that took a graph (tests and logs read these)
        self.num_eager = 0  # decode-only steps that did not fit a bucket
        self.num_padding_rows = 0  # rows replayed for nobody (the cost of bucketing)

    # --- which steps --------------------------------------------------------------------------
    def bucket(self, batch: ScheduledBatch) -> tuple[int, int] | None:
        """(batch bucket, blocks bucket) of a plain decode step; None: run it eager."""
        seqs = batch.seqs
        if not seqs or any(n != 1 for n in batch.num_tokens) or not all(batch.sample):
            return None
        if any(s.spec_tokens for s in seqs) or self.runner.lora is not None:
            return None
        rows = pick_bucket(len(seqs), self.sizes)
        longest = max(s.num_computed for s in seqs) + 1  # keys after this step
        if rows is None or longest > self.max_ctx:
            self.num_eager += 1
            return None
        return rows, blocks_bucket(longest, self.runner.block_size)

    def run(self, batch: ScheduledBatch) -> torch.Tensor | None:
        """The step's logits (S, V) through a graph, or None when the step must run eager."""
        key = self.bucket(batch)
        if key is None:
            return None
        entry = self.graphs.get(key)
        if entry is None:
            entry = self.graphs[key] = self.capture(*key)
        self.fill(entry, batch)
        self.num_replays += 1
        return entry.graph.replay()[: len(batch.seqs)].clone()  # the next replay overwrites

    # --- static buffers -----------------------------------------------------------------------
    def capture(self, B: int, M: int) -> StaticDecode:
        """Static buffers for B rows x M blocks, all padding (so the warm-up and capture runs
        write only to the scratch block), and the graph of one forward pass over them."""
        dev, bs = self.runner.device, self.runner.block_size
        pad = torch.tensor([0, 0, self.scratch * bs, 1], device=dev)  # id, pos, slot, ctx
        entry = StaticDecode(
            per_row=pad[:, None].repeat(1, B),
            tables=torch.full((B, M), self.scratch, device=dev),
            key_pos=torch.arange(M * bs, device=dev),
            rows=torch.arange(B, device=dev),
            graph=self.make_graph(),
        )
        entry.out = entry.graph.capture(lambda: self.forward(entry))
        return entry

    def fill(self, entry: StaticDecode, batch: ScheduledBatch) -> None:
        """Copy this step's rows into the static buffers; the rows past the batch are padding
        (token 0 at position 0, writing to and reading from the scratch block's first slot)."""
        bs, seqs = self.runner.block_size, batch.seqs
        B, M = entry.tables.shape
        pad = B - len(seqs)
        self.num_padding_rows += pad
        cs = [s.num_computed for s in seqs]
        slots = [s.block_table[c // bs] * bs + c % bs for s, c in zip(seqs, cs)]
        per_row = [
            [s.tokens[c] for s, c in zip(seqs, cs)] + [0] * pad,
            cs + [0] * pad,
            slots + [self.scratch * bs] * pad,
            [c + 1 for c in cs] + [1] * pad,
        ]
        tables = [(s.block_table + [self.scratch] * M)[:M] for s in seqs]
        tables += [[self.scratch] * M] * pad
        entry.per_row.copy_(torch.tensor(per_row))  # one host -> device copy each
        entry.tables.copy_(torch.tensor(tables))

    def forward(self, entry: StaticDecode) -> torch.Tensor:
        """One forward pass over the static buffers, with fixed shapes and no host sync: every
        row attends over the L keys of its (padded) block table, masked past its context."""
        bs, dtype = self.runner.block_size, self.runner.dtype
        ids, positions, slot_mapping, ctx = entry.per_row
        pos = entry.key_pos  # (L,)
        slots = entry.tables[:, pos // bs] * bs + pos % bs  # (B, L)
        valid = pos[None, :] < ctx[:, None]  # (B, L)
        mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
        mask = mask.masked_fill(~valid, float("-inf"))[:, None, None, :]  # (B, 1, 1, L)
        B = slots.shape[0]
        group = AttnGroup(rows=entry.rows, slots=slots, mask=mask, B=B, T=1, padded=False)
        inputs = StepInputs(ids, positions, slot_mapping, [group], sample_rows=entry.rows)
        return self.runner.forward(inputs)  # (B, V)


def make_decode_graphs(runner: ModelRunner, cfg) -> DecodeGraphs | None:
    """The engine's decode graphs for `cfg` (an EngineConfig), or None where graphs are off:
    --enforce-eager, a device other than CUDA, LoRA, speculative decoding, an 8-bit KV cache."""
    off = cfg.enforce_eager or runner.device.type != "cuda" or runner.kv.quantized
    if off or cfg.lora is not None or cfg.speculative is not None:
        return None
    with torch.cuda.device(runner.device):
        pool = torch.cuda.graph_pool_handle()
    return DecodeGraphs(
        runner, cfg.max_num_seqs, cfg.max_seq_len_to_capture, lambda: CudaGraph(pool, runner.device)
    )
