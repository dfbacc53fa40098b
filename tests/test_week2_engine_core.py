"""Week 2b: the block manager and scheduler alone (pure Python, no model)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from week2_serving.engine.block_manager import BlockError, BlockManager
from week2_serving.engine.scheduler import POLICIES, Policy, Scheduler, SchedulerConfig
from week2_serving.engine.sequence import SamplingParams, Sequence, Status


def seq(n: int, max_tokens: int = 4, start: int = 0, **kw) -> Sequence:
    return Sequence(list(range(start, start + n)), SamplingParams(max_tokens=max_tokens, **kw))


def run_step(sched: Scheduler, token: int = 7) -> list[Sequence]:
    """One step with a fake model: every sequence whose last token got computed samples `token`."""
    batch = sched.schedule()
    sampled = {
        s.seq_id: token
        for s, n in zip(batch.seqs, batch.num_tokens)
        if s.num_computed + n == len(s)
    }
    return sched.update(batch, sampled)


# --- block manager -------------------------------------------------------------------------------
def test_allocate_and_free_return_every_block():
    bm = BlockManager(num_blocks=8, block_size=4)
    s = seq(10)
    bm.allocate_prefix(s)
    assert bm.allocate_slots(s, 10) == []
    assert len(s.block_table) == 3 and bm.num_free_blocks == 5
    bm.check_invariants([s])
    bm.free_seq(s)
    assert bm.num_free_blocks == 8 and s.block_table == []
    bm.check_invariants([])


def test_allocation_that_does_not_fit_changes_nothing():
    bm = BlockManager(num_blocks=2, block_size=4)
    s = seq(12)
    bm.allocate_prefix(s)
    assert not bm.can_allocate_slots(s, 12) and bm.can_allocate_slots(s, 8)
    with pytest.raises(BlockError, match="needs 3 free blocks"):
        bm.allocate_slots(s, 12)
    assert s.block_table == [] and bm.num_free_blocks == 2


def test_double_free_is_caught():
    bm = BlockManager(num_blocks=4, block_size=4)
    s = seq(4)
    bm.allocate_prefix(s)
    bm.allocate_slots(s, 4)
    table = list(s.block_table)
    bm.free_seq(s)
    s.block_table = table
    with pytest.raises(BlockError, match="double free"):
        bm.free_seq(s)


def test_prefix_blocks_are_shared_and_counted():
    bm = BlockManager(num_blocks=16, block_size=4)
    a = seq(10)  # blocks [0-3] [4-7] and a partial one
    bm.allocate_prefix(a)
    bm.allocate_slots(a, 10)
    a.num_computed = 10
    bm.register_full_blocks(a)
    b = Sequence(list(range(8)) + [99, 98, 97], SamplingParams())  # same first 8 tokens
    assert bm.allocate_prefix(b) == 8
    assert b.block_table == a.block_table[:2]
    assert [bm.blocks[i].ref_count for i in b.block_table] == [2, 2]
    bm.record_admission(b)
    assert bm.prefix_hits == 8 and bm.prefix_queries == 11
    bm.allocate_slots(b, 3)
    bm.check_invariants([a, b])
    c = Sequence([0, 1, 2, 5] + list(range(4, 8)), SamplingParams())  # differs in block 0
    assert bm.allocate_prefix(c) == 0


def test_fully_cached_prompt_recomputes_last_token_with_copy_on_write():
    bm = BlockManager(num_blocks=8, block_size=4)
    a = seq(8)
    bm.allocate_prefix(a)
    bm.allocate_slots(a, 8)
    a.num_computed = 8
    bm.register_full_blocks(a)
    b = seq(8)  # the same 8 tokens: both blocks cached
    assert bm.allocate_prefix(b) == 7  # the last token must still run to give logits
    shared = b.block_table[1]
    copies = bm.allocate_slots(b, 1)
    assert copies == [(shared, b.block_table[1])] and b.block_table[1] != shared
    assert bm.blocks[shared].ref_count == 1  # a keeps the original
    bm.check_invariants([a, b])


def test_freed_cached_blocks_are_reused_then_evicted_lru():
    bm = BlockManager(num_blocks=4, block_size=2)
    a = seq(4)
    bm.allocate_prefix(a)
    bm.allocate_slots(a, 4)
    a.num_computed = 4
    bm.register_full_blocks(a)
    bm.free_seq(a)
    assert bm.num_free_blocks == 4 and bm.num_cached_free_blocks == 2
    again = seq(5)  # same 4 tokens + 1: hits both freed blocks
    assert bm.allocate_prefix(again) == 4
    bm.free_seq(again)
    other = seq(8, start=50)  # needs all 4 blocks: the cached ones get evicted
    bm.allocate_prefix(other)
    bm.allocate_slots(other, 8)
    assert bm.num_evictions == 2 and bm.cached == {}
    bm.check_invariants([other])


# --- scheduler -------------------------------------------------------------------------------
def make(
    policy="continuous", num_blocks=64, block_size=4, max_num_seqs=8, budget=64, max_model_len=None
):
    bm = BlockManager(num_blocks, block_size)
    cfg = SchedulerConfig(max_num_seqs, budget, policy, max_model_len=max_model_len)
    return Scheduler(cfg, bm), bm


def test_chunked_prefill_respects_the_token_budget():
    sched, _ = make(budget=8)
    s = seq(20)
    sched.add(s)
    chunks = []
    for _ in range(3):
        batch = sched.schedule()
        chunks.append(batch.num_tokens[0])
        sched.update(batch, {s.seq_id: 7} if s.num_computed + batch.num_tokens[0] == 20 else {})
    assert chunks == [8, 8, 4] and s.num_output_tokens == 1


def test_continuous_admits_new_requests_while_others_decode():
    sched, _ = make()
    a = seq(4, max_tokens=10)
    sched.add(a)
    run_step(sched)
    b = seq(4, max_tokens=2, start=20)
    sched.add(b)
    batch = sched.schedule()
    assert batch.seqs == [a, b] and batch.num_tokens == [1, 4]


@pytest.mark.parametrize("policy", ["static", "sequential"])
def test_static_and_sequential_wait_for_the_batch_to_finish(policy):
    sched, _ = make(policy)
    first = [seq(4, max_tokens=m, start=10 * i) for i, m in enumerate([2, 5])]
    for s in first:
        sched.add(s)
    late = seq(4, max_tokens=2, start=90)
    run_step(sched)
    sched.add(late)
    admitted_late_at = None
    for step in range(20):
        batch = sched.schedule()
        if late in batch.seqs and admitted_late_at is None:
            admitted_late_at = step
            assert all(s.is_finished for s in first)
        sampled = {
            s.seq_id: 7
            for s, n in zip(batch.seqs, batch.num_tokens)
            if s.num_computed + n == len(s)
        }
        sched.update(batch, sampled)
        if policy == "sequential":
            assert len(batch.seqs) <= 1
    assert admitted_late_at is not None and late.is_finished


def test_out_of_blocks_preempts_the_youngest_and_requeues_it_first():
    sched, bm = make(num_blocks=4, block_size=2)
    old, young = seq(3, max_tokens=5), seq(3, max_tokens=5, start=10)
    sched.add(old)
    sched.add(young)
    run_step(sched)  # both prefilled: 2 blocks each, pool full
    assert bm.num_free_blocks == 0
    run_step(sched)  # position 3 still fits in each one's 2nd block
    assert young.num_preemptions == 0
    run_step(sched)  # old needs a 3rd block for position 4 -> young is preempted
    assert young.status is Status.WAITING and sched.waiting[0] is young
    assert young.num_preemptions == 1 and young.block_table == []
    assert old.num_preemptions == 0 and len(old.block_table) == 3
    assert young.num_output_tokens == 2  # its sampled tokens are kept, to be recomputed
    for _ in range(40):
        run_step(sched)
    assert old.is_finished and young.is_finished and bm.num_free_blocks == 4
    assert young.num_output_tokens == 5


def test_request_larger_than_the_cache_is_refused():
    sched, _ = make(num_blocks=2, block_size=4)
    with pytest.raises(ValueError, match="needs up to 3 KV blocks"):
        sched.add(seq(8, max_tokens=4))


def test_bad_policy_and_sampling_params_are_named():
    with pytest.raises(ValueError, match="scheduling='fast'"):
        SchedulerConfig(policy="fast")
    with pytest.raises(ValueError, match="max_tokens=0"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="top_p=0"):
        SamplingParams(top_p=0)


def test_a_policy_is_one_entry_in_the_table(monkeypatch):
    pairs = Policy(
        "two at a time, joining as others finish", admit_while_running=True, max_running=2
    )
    monkeypatch.setitem(POLICIES, "pairs", pairs)
    with pytest.raises(
        ValueError, match="use one of continuous, static, static-padded, sequential, pairs"
    ):
        SchedulerConfig(policy="fast")
    sched, _ = make("pairs")
    seqs = [seq(4, max_tokens=2, start=10 * i) for i in range(5)]
    for s in seqs:
        sched.add(s)
    for _ in range(30):
        batch = sched.schedule()
        assert len(batch.seqs) <= 2
        sched.update(batch, {s.seq_id: 7 for s in batch.sampled_seqs})
    assert all(s.is_finished for s in seqs)


# --- property test: no leak, no double free, whatever happens ---------------------------------
ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("add"),
            st.integers(1, 12),  # prompt length
            st.integers(1, 10),  # max_tokens
            st.integers(0, 2),  # which shared prefix
        ),
        st.tuples(st.just("step")),
        st.tuples(st.just("abort"), st.integers(0, 50)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(
    ops=ops,
    num_blocks=st.integers(6, 16),
    policy=st.sampled_from(["continuous", "static", "static-padded"]),
)
def test_random_add_step_abort_never_leaks_blocks(ops, num_blocks, policy):
    sched, bm = make(policy, num_blocks=num_blocks, block_size=2, max_num_seqs=4, budget=6)
    seqs: list[Sequence] = []
    for op in ops:
        if op[0] == "add":
            _, n, max_tokens, prefix = op
            tokens = [100 * prefix + i for i in range(4)] + list(range(n))  # shared first 4
            s = Sequence(tokens, SamplingParams(max_tokens=max_tokens))
            try:
                sched.add(s)
            except ValueError:
                continue  # too large for this pool: refused up front, nothing allocated
            seqs.append(s)
        elif op[0] == "step":
            run_step(sched, token=len(seqs) % 5)
        elif seqs:
            sched.abort(seqs[op[1] % len(seqs)])
        live = [s for s in seqs if not s.is_finished] + sched.padding  # padding holds blocks
        bm.check_invariants(live)
        held = {b for s in live for b in s.block_table}  # shared prefix blocks count once
        assert len(held) == bm.num_used_blocks
    for _ in range(500):  # drain: everything must finish
        if not sched.has_work():
            break
        run_step(sched)
    assert not sched.has_work() and not sched.padding
    assert all(s.is_finished for s in seqs)
    bm.check_invariants([])
    assert bm.num_free_blocks == bm.num_blocks
    assert all(b.ref_count == 0 for b in bm.blocks)


def test_static_padded_keeps_finished_rows_in_the_forward_until_the_batch_ends():
    sched, bm = make("static-padded", max_model_len=64)
    short, long = seq(4, max_tokens=2), seq(4, max_tokens=6, start=10)
    late = seq(4, max_tokens=2, start=90)
    for s in (short, long):
        sched.add(s)
    rows = []
    for _ in range(8):
        if _ == 1:
            sched.add(late)
        batch = sched.schedule()
        rows.append(len(batch.seqs))
        assert late not in batch.seqs or (short.is_finished and long.is_finished)
        assert not any(s.padding for s in batch.sampled_seqs)  # computed, never sampled
        sched.update(batch, {s.seq_id: 7 for s in batch.sampled_seqs})
        bm.check_invariants([s for s in (short, long, late) if not s.is_finished] + sched.padding)
        if long.is_finished:
            break
    # short's row is still computed after it finished (2 rows every step), then all is freed
    assert short.output_token_ids == [7, 7] and long.num_output_tokens == 6
    assert rows == [2] * 6 and sched.padding == [] and short.block_table == []
    assert bm.num_used_blocks == 0 and not late.is_finished  # the next batch starts now


def test_static_padded_drops_padding_rows_before_preempting_a_real_request():
    sched, bm = make("static-padded", num_blocks=4, block_size=2)
    short, long = seq(2, max_tokens=1), seq(2, max_tokens=5, start=10)
    for s in (short, long):
        sched.add(s)
    had_padding = False
    while not long.is_finished:
        run_step(sched)
        had_padding |= bool(sched.padding)
        bm.check_invariants([long, *sched.padding] if not long.is_finished else sched.padding)
    assert had_padding and long.num_preemptions == 0 and sched.num_preemptions == 0
    assert sched.padding == [] and bm.num_used_blocks == 0


def test_static_padded_rows_go_with_an_aborted_batch_and_never_enter_the_prefix_cache():
    sched, bm = make("static-padded", block_size=2)
    short, long = seq(4, max_tokens=1), seq(4, max_tokens=9, start=10)
    for s in (short, long):
        sched.add(s)
    for _ in range(4):
        run_step(sched)
    (pad,) = sched.padding
    assert pad.num_computed >= 7  # positions 4..6 were computed by the padding row
    # the prompt's two full blocks are named; the block of positions 4-5 (filled while padding)
    # is not, nor is anything after it
    assert len(pad.block_hashes) == 2
    assert all(bm.blocks[b].hash is None for b in pad.block_table[2:])
    sched.abort(long)  # the batch's last real request: nothing may stay behind
    assert sched.padding == [] and not sched.has_work() and bm.num_used_blocks == 0
