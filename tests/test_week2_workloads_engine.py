"""Week 2 harness against our engine, in this process: multi-turn load, repeated runs, and the
prefix-cache reset route between them."""

from __future__ import annotations

import httpx
import pytest

from tests.engine_server_helpers import engine_idle, running_server, tiny_engine, wait_until
from week2_serving.engine.block_manager import BlockManager
from week2_serving.engine.cache_admin import add_cache_routes, reset_prefix_cache
from week2_serving.engine.sequence import Sequence
from week2_serving.harness import bench, server_metrics


def test_reset_forgets_cached_prefixes_only_when_idle():
    bm = BlockManager(num_blocks=8, block_size=2)
    seq = Sequence(list(range(2, 8)))
    bm.allocate_prefix(seq)
    bm.allocate_slots(seq, len(seq))
    seq.num_computed = len(seq)  # as if a step computed the prompt
    bm.register_full_blocks(seq)
    assert not reset_prefix_cache(bm) and bm.cached  # a sequence holds blocks: refused
    bm.free_seq(seq)
    again = Sequence(list(range(2, 8)))
    assert bm.allocate_prefix(again) == 5  # all 3 blocks cached; the last token recomputes
    bm.free_seq(again)
    assert reset_prefix_cache(bm) and not bm.cached
    assert bm.allocate_prefix(Sequence(list(range(2, 8)))) == 0
    bm.check_invariants([])


@pytest.fixture(scope="module")
def served(tiny_gpt):
    engine = tiny_engine(tiny_gpt["hf_dir"], block_size=4, num_blocks=128)
    with running_server(engine) as (url, app):
        add_cache_routes(app, app.state.engine, engine)
        yield url, engine, tiny_gpt["hf_dir"]


def multi_turn(url: str, hf_dir, **kw) -> dict:
    cfg = bench.BenchConfig(
        base_url=url,
        model="tiny",
        tokenizer=str(hf_dir),
        dataset_name="multi-turn",
        num_prompts=6,
        num_turns=3,
        think_time_s=0.01,
        random_input_len=8,
        random_output_len=4,
        num_warmups=1,
        save=False,
        **kw,
    )
    return bench.main(cfg)


def test_multi_turn_hits_the_prefix_cache_and_resets_between_runs(served):
    url, engine, hf_dir = served
    before = server_metrics.scrape(url)
    res = multi_turn(url, hf_dir, num_runs=2)
    wait_until(lambda: engine_idle(engine), 10, "the engine to go idle")
    after = server_metrics.scrape(url)
    counters = server_metrics.cell_counters(before, after)
    assert res["num_runs"] == 2 and res["prefix_cache_reset"] == ["reset", "reset"]
    assert res["completed"] == 6 and res["failed"] == 0, res["errors"]
    assert set(res["per_turn"]) == {"0", "1", "2"}
    lens = [res["per_turn"][t]["mean_prompt_len"] for t in ("0", "1", "2")]
    assert lens == sorted(lens) and lens[0] == 8  # the history grows every turn
    assert counters["prefix_cache_hit_rate"] > 0  # later turns found earlier prompts
    assert {q["turn"] for q in res["requests"]} == {0, 1, 2}
    assert "p99_tpot_token_weighted_ms" in res["spread"]


def test_reset_is_refused_while_a_request_runs(served):
    url, engine, _ = served
    engine_blocks = engine.block_manager
    seq = Sequence([5, 6, 7, 8, 9])
    engine_blocks.allocate_prefix(seq)  # the engine is idle: this test holds its only blocks
    engine_blocks.allocate_slots(seq, len(seq))
    try:
        assert httpx.post(url + "/reset_prefix_cache", json={}).status_code == 409
    finally:
        engine_blocks.free_seq(seq)
    assert httpx.post(url + "/reset_prefix_cache", json={}).json() == {"reset": True}


def test_a_trace_is_replayed_at_its_own_times(served, tmp_path):
    url, _, hf_dir = served
    trace = tmp_path / "t.csv"
    trace.write_text("timestamp,input_len,output_len\n5.0,6,3\n5.4,4,2\n5.2,5,4\n")
    res = bench.main(
        bench.BenchConfig(
            base_url=url,
            model="tiny",
            tokenizer=str(hf_dir),
            dataset_name="trace",
            dataset_path=str(trace),
            trace_speedup=2.0,
            num_warmups=0,
            save=False,
        )
    )
    assert res["completed"] == 3 and res["duration"] >= 0.2  # the last one is sent at 0.2 s
    sent = [(q["arrival_s"], q["start_time"]) for q in res["requests"]]
    assert [a for a, _ in sent] == pytest.approx([0.0, 0.1, 0.2])
    gaps = [b[1] - a[1] for a, b in zip(sent, sent[1:])]
    assert all(0.08 <= g <= 0.3 for g in gaps), gaps
    assert [q["output_tokens"] for q in res["requests"]] == [3, 4, 2]  # counted, as asked
