"""Tensor parallelism on a CPU: a Megatron MLP split over two `gloo` processes.

    .venv/bin/python -m docs.concepts.tp_demo

The MLP is y = gelu(x A) B with A (d, h) and B (h, d). Megatron-LM splits it so that only one
collective runs per MLP:

- A by **columns**: rank r holds A[:, r-th half], computes gelu(x A_r) (B, h/2) on its own —
  gelu is elementwise, so no exchange is needed before it;
- B by **rows**: rank r holds B[r-th half, :], computes a partial (B, d) = gelu(x A_r) B_r;
- one **all-reduce (sum)** of the partials gives y on every rank.

The script runs the split over two processes (torch.distributed, backend gloo, 127.0.0.1, a
free port) and checks the result equals the single-process MLP. See parallelism.md.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

WORLD = 2


def make_weights(d: int = 16, h: int = 64, batch: int = 4, seed: int = 0):
    """x (batch, d), A (d, h), B (h, d): the same on every rank (same seed)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d, generator=gen, dtype=torch.float64)
    a = torch.randn(d, h, generator=gen, dtype=torch.float64) / d**0.5
    b = torch.randn(h, d, generator=gen, dtype=torch.float64) / h**0.5
    return x, a, b


def mlp(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The single-process reference: (batch, d) -> (batch, d)."""
    return F.gelu(x @ a) @ b


def tp_mlp(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, rank: int, world: int):
    """This rank's share of the MLP, then the one all-reduce: (batch, d) on every rank."""
    h = a.shape[1]
    if h % world:
        raise ValueError(f"hidden size {h} must be divisible by the world size {world}")
    cols = slice(rank * h // world, (rank + 1) * h // world)
    a_r = a[:, cols]  # (d, h/world): column-parallel
    b_r = b[cols, :]  # (h/world, d): row-parallel
    partial = F.gelu(x @ a_r) @ b_r  # (batch, d): this rank's summand
    dist.all_reduce(partial, op=dist.ReduceOp.SUM)
    return partial


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    try:
        y = tp_mlp(*make_weights(), rank=rank, world=WORLD)
        torch.save(y, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_tensor_parallel(start_method: str = "spawn") -> list[torch.Tensor]:
    """Start the two ranks; each rank's (batch, d) output, in rank order.

    `spawn` starts fresh interpreters (what real launchers do); `fork` reuses this process's
    imports and starts in a fraction of the time (the test uses it).
    """
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as tmp:
        mp.start_processes(
            _worker, args=(free_port(), tmp), nprocs=WORLD, join=True, start_method=start_method
        )
        return [torch.load(Path(tmp) / f"rank{r}.pt") for r in range(WORLD)]


def main() -> float:
    reference = mlp(*make_weights())
    outputs = run_tensor_parallel()
    err = max(float((y - reference).abs().max()) for y in outputs)
    for rank, y in enumerate(outputs):
        print(f"rank {rank}: equals the single-process MLP: {torch.allclose(y, reference)}")
    print(f"largest difference: {err:.2e} (float64; summation order differs, so not always 0)")
    return err


if __name__ == "__main__":
    main()
