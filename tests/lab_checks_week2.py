"""The checks that grade week 2's labs (the engine's pieces), as plain functions of no argument.

Same rules as tests/lab_checks.py: each raises when the lab's code is wrong, reads the lab's
functions through their modules at call time, and runs in well under a second. The week's own
tests (tests/test_week2_engine_*.py) grade the same code more deeply in `make lab-check`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _seq(n: int, max_tokens: int = 4, start: int = 0):
    from week2_serving.engine.sequence import SamplingParams, Sequence

    return Sequence(list(range(start, start + n)), SamplingParams(max_tokens=max_tokens))


# --- block-manager ------------------------------------------------------------------------------
def block_manager_allocate_and_free() -> None:
    from week2_serving.engine import block_manager

    bm = block_manager.BlockManager(num_blocks=6, block_size=4)
    s = _seq(10)
    assert bm.allocate_prefix(s) == 0 and bm.allocate_slots(s, 10) == []
    assert len(s.block_table) == 3 and bm.num_free_blocks == 3, "10 tokens need 3 blocks of 4"
    bm.check_invariants([s])
    table = list(s.block_table)
    bm.free_seq(s)
    assert bm.num_free_blocks == 6 and s.block_table == [] and s.num_computed == 0
    bm.check_invariants([])
    s.block_table = table
    try:
        bm.free_seq(s)
    except block_manager.BlockError:
        pass
    else:
        raise AssertionError("freeing the same blocks twice must raise BlockError")


def block_manager_prefix_sharing_and_copy_on_write() -> None:
    from week2_serving.engine.block_manager import BlockManager

    bm = BlockManager(num_blocks=8, block_size=4)
    a = _seq(8)
    bm.allocate_prefix(a)
    bm.allocate_slots(a, 8)
    a.num_computed = 8
    bm.register_full_blocks(a)
    b = _seq(8)  # the same 8 tokens: both blocks are cached
    assert bm.allocate_prefix(b) == 7, "share both blocks, but leave the last token to compute"
    assert b.block_table == a.block_table and bm.blocks[a.block_table[0]].ref_count == 2
    shared = b.block_table[1]
    copies = bm.allocate_slots(b, 1)  # b writes its last slot: a private copy first
    assert copies == [(shared, b.block_table[1])] and b.block_table[1] != shared
    bm.check_invariants([a, b])
    c = _seq(9, start=1)  # another first block: nothing shared
    assert bm.allocate_prefix(c) == 0 and c.block_table == []
    bm.free_seq(b)
    bm.free_seq(a)
    assert bm.num_free_blocks == 8 and bm.num_cached_free_blocks == 2
    bm.check_invariants([])


# --- scheduler ----------------------------------------------------------------------------------
def _scheduler(num_blocks: int, budget: int, policy: str = "continuous"):
    from week2_serving.engine.block_manager import BlockManager
    from week2_serving.engine.scheduler import Scheduler, SchedulerConfig

    cfg = SchedulerConfig(max_num_seqs=4, max_num_batched_tokens=budget, policy=policy)
    return Scheduler(cfg, BlockManager(num_blocks, block_size=4))


def _step(sched) -> list:
    """One step with a fake model that always samples token 7; returns the finished."""
    batch = sched.schedule()
    assert batch.total_tokens <= sched.config.max_num_batched_tokens, "over the token budget"
    done = {
        s.seq_id: 7 for s, n in zip(batch.seqs, batch.num_tokens) if s.num_computed + n == len(s)
    }
    return sched.update(batch, done)


def scheduler_chunks_and_admits_continuously() -> None:
    sched = _scheduler(num_blocks=32, budget=8)
    short, long = _seq(3, max_tokens=3), _seq(20, max_tokens=3, start=100)
    sched.add(short)
    _step(sched)  # short's prefill
    sched.add(long)
    batch = sched.schedule()
    assert batch.seqs == [short, long], "a new request joins while another decodes"
    assert batch.num_tokens == [1, 7], "one token per decode, the rest of the budget to a chunk"
    sched.update(batch, {short.seq_id: 7})
    finished = []
    for _ in range(8):
        finished += _step(sched)
    assert [s.seq_id for s in finished] == [short.seq_id, long.seq_id]
    assert all(s.num_output_tokens == 3 for s in finished) and not sched.has_work()
    assert sched.bm.num_free_blocks == 32, "finished sequences must give their blocks back"


def scheduler_preempts_the_youngest() -> None:
    from week2_serving.engine.sequence import Status

    sched = _scheduler(num_blocks=4, budget=64)
    old, young = _seq(7, max_tokens=6), _seq(7, max_tokens=6, start=50)
    sched.add(old)
    sched.add(young)
    _step(sched)  # both prefill: 2 blocks each, the pool is full
    assert sched.running == [old, young] and sched.bm.num_free_blocks == 0
    _step(sched)  # both decode token 8: still in their second block
    batch = sched.schedule()  # token 9 needs a third block: someone must go
    assert batch.preempted == [young] and batch.seqs == [old], "preempt the youngest only"
    assert young.status == Status.WAITING and sched.waiting[0] is young
    assert young.block_table == [] and young.num_preemptions == 1 == sched.num_preemptions
    sched.update(batch, {old.seq_id: 7} if old.num_computed + 1 == len(old) else {})
    for _ in range(30):
        _step(sched)
    assert not sched.has_work() and old.num_output_tokens == young.num_output_tokens == 6
    assert sched.bm.num_free_blocks == 4


def scheduler_static_waits_for_the_batch() -> None:
    sched = _scheduler(num_blocks=32, budget=64, policy="static")
    first = _seq(3, max_tokens=4)
    sched.add(first)
    _step(sched)
    second = _seq(3, max_tokens=2, start=9)
    sched.add(second)
    while first.status.name == "RUNNING":
        assert second not in sched.running, "static: no one joins a running batch"
        _step(sched)
    for _ in range(4):
        _step(sched)
    assert second.num_output_tokens == 2 and not sched.has_work()


# --- paged-attention ----------------------------------------------------------------------------
def paged_attention_gather_slots() -> None:
    from week2_serving.engine import attention

    tables = torch.tensor([[3, 1], [2, 0]])  # (B=2, M=2), block size 4
    slots, valid = attention.gather_slots(tables, torch.tensor([6, 3]), 4)
    assert slots.tolist() == [[12, 13, 14, 15, 4, 5], [8, 9, 10, 0, 0, 0]]
    assert valid.tolist() == [[True] * 6, [True] * 3 + [False] * 3]


def paged_attention_equals_dense() -> None:
    from week2_serving.engine import attention

    g = torch.Generator().manual_seed(0)
    H, Hkv, D, bs, num_blocks = 4, 2, 8, 4, 12
    ctx_lens, q_lens, tables = [9, 3, 6], [2, 3, 1], [[7, 2, 10], [4], [0, 11]]
    k_pool, v_pool = torch.randn(2, num_blocks * bs, Hkv, D, generator=g)
    starts = [0, 2, 5]
    group = attention.make_group(tables, ctx_lens, q_lens, starts, bs)
    q = torch.randn(sum(q_lens), H, D, generator=g)  # (N, H, D) flat rows
    out = attention.attend(q, k_pool, v_pool, [group])
    reader = lambda flat: (k_pool[flat], v_pool[flat])  # noqa: E731 the quantized-pool path
    torch.testing.assert_close(attention.attend(q, None, None, [group], reader), out)
    for table, c, t, s in zip(tables, ctx_lens, q_lens, starts):
        idx = torch.tensor([table[p // bs] * bs + p % bs for p in range(c)])
        k = k_pool[idx].transpose(0, 1).repeat_interleave(H // Hkv, 0)  # (H, c, D)
        v = v_pool[idx].transpose(0, 1).repeat_interleave(H // Hkv, 0)
        causal = torch.arange(c)[None, :] <= torch.arange(c - t, c)[:, None]  # (t, c)
        dense = F.scaled_dot_product_attention(q[s : s + t].transpose(0, 1), k, v, causal)
        torch.testing.assert_close(out[s : s + t], dense.transpose(0, 1), atol=1e-5, rtol=1e-5)


# --- spec-rejection -----------------------------------------------------------------------------
def spec_greedy_accept() -> None:
    from week2_serving.engine.spec.rejection import greedy_accept

    assert greedy_accept([5, 6, 7, 8], [5, 6, 7]) == [5, 6, 7, 8], "all agree: + the bonus"
    assert greedy_accept([5, 9, 7, 8], [5, 6, 7]) == [5, 9], "stop at the first disagreement"
    assert greedy_accept([4, 6, 7, 8], [5, 6, 7]) == [4]
    assert greedy_accept([3], []) == [3]


def spec_rejection_keeps_the_target_distribution() -> None:
    from week2_serving.engine.spec import rejection

    p = torch.tensor([[0.1, 0.6, 0.2, 0.1], [0.4, 0.1, 0.1, 0.4], [0.25] * 4])  # (k+1, V)
    q = torch.tensor([[0.5, 0.2, 0.2, 0.1], [0.1, 0.1, 0.7, 0.1]])  # (k, V) the proposer
    g, n = torch.Generator().manual_seed(0), 3000
    first, second = torch.zeros(4), torch.zeros(4)
    for _ in range(n):
        draft = [int(torch.multinomial(q[j], 1, generator=g)) for j in range(2)]
        out = rejection.rejection_sample(p, q, draft, g)
        assert 1 <= len(out) <= 3 and out[: len(out) - 1] == draft[: len(out) - 1]
        first[out[0]] += 1
        if len(out) > 1:
            second[out[1]] += 1
    # the first token ~ p[0]; given the first accepted, the second ~ p[1] (binomial noise ~ 0.01)
    torch.testing.assert_close(first / n, p[0], atol=0.035, rtol=0)
    torch.testing.assert_close(second / second.sum(), p[1], atol=0.05, rtol=0)
    point = rejection.one_hot_probs([2], 4)  # an n-gram guess of token 2 the target never makes
    pz = torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.25] * 4])
    assert all(rejection.rejection_sample(pz, point, [2], g)[0] in (0, 1) for _ in range(20))


# --- kv-int8 ------------------------------------------------------------------------------------
def kv_int8_round_trip() -> None:
    from week2_serving.engine import kv_quant

    fmt = kv_quant.FORMATS["int8"]
    x = torch.randn(3, 2, 16, generator=torch.Generator().manual_seed(0)) * 5  # (T, Hkv, D)
    x[1, 0] = 0.0  # a zero row
    codes, scale = kv_quant.quantize(x, fmt)
    assert codes.dtype == torch.int8 and codes.shape == x.shape and scale.shape == (3, 2)
    assert scale.dtype == torch.float32 and int(codes.abs().max()) == 127, "use the full range"
    back = kv_quant.dequantize(codes, scale, torch.bfloat16)
    assert back.dtype == torch.bfloat16 and torch.count_nonzero(back[1, 0]) == 0
    err = (kv_quant.dequantize(codes, scale, torch.float32) - x).abs().amax(-1)  # (T, Hkv)
    bound = x.abs().amax(-1) * fmt.rel_error + 1e-6  # half a step of each row's own scale
    assert bool((err <= bound).all()), "round to nearest: at most half a step off"
    torch.testing.assert_close(scale, x.abs().amax(-1) / 127)


CHECKS: dict[str, list[Callable[[], None]]] = {
    "block-manager": [
        block_manager_allocate_and_free,
        block_manager_prefix_sharing_and_copy_on_write,
    ],
    "scheduler": [
        scheduler_chunks_and_admits_continuously,
        scheduler_preempts_the_youngest,
        scheduler_static_waits_for_the_batch,
    ],
    "paged-attention": [paged_attention_gather_slots, paged_attention_equals_dense],
    "spec-rejection": [spec_greedy_accept, spec_rejection_keeps_the_target_distribution],
    "kv-int8": [kv_int8_round_trip],
}
