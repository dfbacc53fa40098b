"""Week 2 harness: the multi-turn, gsp and trace workloads, their schedule, repeated runs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from week2_serving.harness.bench_config import BenchConfig
from week2_serving.harness.metrics import RequestRecord
from week2_serving.harness.multiturn import TurnRequest, multi_turn_requests, ttft_by_turn
from week2_serving.harness.repeats import combine_runs, spread, with_range
from week2_serving.harness.schedule import chains
from week2_serving.harness.tpot_weights import token_weighted_tpot
from week2_serving.harness.traces import (
    TimedRequest,
    TraceConfig,
    read_trace,
    synthetic_trace,
    trace_requests,
    write_trace,
)
from week2_serving.harness.workloads import WORKLOADS, build_workload


class Tok:
    """100 ids, two of them special: enough for random prompts."""

    all_special_ids = [0, 1]

    def __len__(self):
        return 100


def test_each_turn_holds_the_whole_conversation_so_far():
    reqs = multi_turn_requests(Tok(), 3, 4, input_len=5, output_len=7, think_time_s=0.5)
    assert len(reqs) == 12 and [r.turn for r in reqs[:4]] == [0, 1, 2, 3]
    for c in range(3):
        turns = [r for r in reqs if r.conversation == c]
        for prev, nxt in zip(turns, turns[1:]):
            # the previous prompt, a reply of its output length, a new message of 5 tokens
            assert nxt.prompt[: len(prev.prompt)] == prev.prompt
            assert len(nxt.prompt) == len(prev.prompt) + prev.output_len + 5
            assert nxt.think_time_s == 0.5
        assert turns[0].think_time_s == 0.0
    assert reqs[0].prompt != reqs[4].prompt  # conversations differ
    assert all(t not in (0, 1) for r in reqs for t in r.prompt)


def test_multi_turn_workload_needs_a_whole_conversation():
    cfg = BenchConfig(dataset_name="multi-turn", num_prompts=3, num_turns=4)
    with pytest.raises(ValueError, match="no whole conversation"):
        build_workload(cfg, Tok())
    cfg = BenchConfig(dataset_name="multi-turn", num_prompts=9, num_turns=4)
    assert len(build_workload(cfg, Tok())) == 8


def test_gsp_groups_share_their_system_prompt_and_are_interleaved():
    cfg = BenchConfig(
        dataset_name="generated-shared-prefix",
        gsp_num_groups=3,
        gsp_prompts_per_group=5,
        gsp_system_prompt_len=20,
        gsp_question_len=4,
        gsp_output_len=6,
    )
    reqs = build_workload(cfg, Tok())
    assert len(reqs) == 15 and all(r.prompt_len == 24 and r.output_len == 6 for r in reqs)
    systems = [tuple(r.prompt[:20]) for r in reqs]
    assert len(set(systems)) == 3 and all(systems.count(s) == 5 for s in set(systems))
    assert systems != sorted(systems, key=systems.index)  # shuffled, not group after group


def test_vllm_names_are_aliases_of_ours():
    assert WORKLOADS["custom"].build is WORKLOADS["file"].build
    assert WORKLOADS["prefix_repetition"].build is WORKLOADS["shared-prefix"].build


def test_trace_round_trip_and_burstgpt_columns(tmp_path):
    rows = synthetic_trace(TraceConfig(num_requests=50, rate=5, burstiness=0.3, max_len=40))
    assert rows[0][0] == 0 and all(b[0] >= a[0] for a, b in zip(rows, rows[1:]))
    assert all(1 <= i <= 40 and 1 <= o <= 40 for _, i, o in rows)
    path = write_trace(rows, tmp_path / "t.csv")
    assert path.read_text().startswith("Timestamp,Model,Request tokens,Response tokens")
    assert read_trace(path) == [(float(t), i, o) for t, i, o in rows]
    short = tmp_path / "s.csv"
    short.write_text("timestamp,input_len,output_len\n10,3,4\n12,5,0\n11,2,2\n")
    reqs = trace_requests(short, Tok(), speedup=2.0)  # the 0-output row is skipped
    assert [(r.arrival_s, r.prompt_len, r.output_len) for r in reqs] == [(0, 3, 4), (0.5, 2, 2)]


def test_a_trace_without_the_columns_says_which(tmp_path):
    bad = tmp_path / "b.csv"
    bad.write_text("time,tokens\n1,2\n")
    with pytest.raises(ValueError, match="lacks"):
        read_trace(bad)


def test_the_shipped_trace_reads():
    rows = read_trace("week2_serving/harness/data/trace-synthetic.csv")
    assert len(rows) >= 100


def test_schedule_chains_conversations_and_uses_trace_times():
    reqs = multi_turn_requests(Tok(), 2, 3, 4, 4)
    plan = chains(reqs, rate=math.inf, burstiness=1.0)
    assert [m for _, m in plan] == [[0, 1, 2], [3, 4, 5]] and all(o == 0 for o, _ in plan)
    timed = [TimedRequest([2], 1, 1, arrival_s=t) for t in (0.3, 0.0, 0.1)]
    assert chains(timed, 1.0, 1.0) == [(0.0, [1]), (0.1, [2]), (0.3, [0])]
    plain = chains([TimedRequest([2], 1, 1)] + [TurnRequest([2], 1, 1)], 2.0, 1.0)
    assert len(plain) == 2  # mixed: the arrival process, one chain per conversation


def rec(ttft: float, latency: float, n: int, ok: bool = True) -> RequestRecord:
    return RequestRecord(prompt_len=4, ttft=ttft, latency=latency, output_tokens=n, success=ok)


def test_token_weighted_tpot_differs_from_request_weighted():
    # a short fast request (10 ms/token, 2 tokens) and a long slow one (30 ms/token, 101 tokens)
    recs = [rec(0.0, 0.010, 2), rec(0.0, 3.0, 101), rec(0, 0, 0, ok=False)]
    w = token_weighted_tpot(recs, (50.0, 99.0))
    assert w["mean_tpot_token_weighted_ms"] == pytest.approx(3010 / 101)
    assert w["p50_tpot_token_weighted_ms"] == pytest.approx(30.0)  # most tokens were slow
    request_weighted = np.mean([10.0, 30.0])
    assert request_weighted == 20.0 and w["mean_tpot_token_weighted_ms"] > 29


def test_ttft_by_turn_pools_successful_turns():
    rows = [
        {"turn": 0, "ttft": 0.1, "prompt_len": 3, "success": True},
        {"turn": 1, "ttft": 0.02, "prompt_len": 9, "success": True},
        {"turn": 0, "ttft": 0.3, "prompt_len": 3, "success": True, "run": 1},
        {"turn": 1, "ttft": 9.0, "prompt_len": 9, "success": False},
        {"ttft": 9.0, "prompt_len": 9, "success": True},  # not a turn
    ]
    turns = ttft_by_turn(rows)
    assert turns["0"]["n"] == 2 and turns["0"]["mean_ttft_ms"] == pytest.approx(200)
    assert turns["1"] == {"n": 1, "mean_ttft_ms": 20.0, "median_ttft_ms": 20.0,
                          "mean_prompt_len": 9.0}  # fmt: skip
    assert ttft_by_turn(rows[-1:]) == {}


def test_combine_runs_reports_medians_and_min_max():
    runs = [
        {"output_throughput": v, "mean_ttft_ms": t, "requests": [{"i": v}], "backend": "openai"}
        for v, t in ((10.0, 5.0), (30.0, 1.0), (20.0, 3.0))
    ]
    out = combine_runs(runs)
    assert out["output_throughput"] == 20.0 and out["mean_ttft_ms"] == 3.0
    assert out["spread"]["output_throughput"] == {
        "median": 20.0,
        "min": 10.0,
        "max": 30.0,
        "values": [10.0, 30.0, 20.0],
    }
    assert [q["run"] for q in out["requests"]] == [0, 1, 2] and out["num_runs"] == 3
    assert with_range(out, "output_throughput", "{:.0f}") == "20 [10–30]"
    assert combine_runs(runs[:1])["num_runs"] == 1 and spread([], ("x",)) == {}
