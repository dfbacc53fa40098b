"""The HTTP-path levers and measurements (issue #13, helper speed2): the engine thread's busy
periods, --switch-interval / --loop-cpus, the byte-level detokenizer (against the plain one) and
http_profile's parts. Tiny model, no server."""

from __future__ import annotations

import asyncio
import os
import random
import sys

import pytest
from transformers import AutoTokenizer

from week2_serving.engine import fast_detokenizer, http_profile
from week2_serving.engine.async_engine import AsyncEngine
from week2_serving.engine.detokenizer import Detokenizer
from week2_serving.engine.fast_detokenizer import ByteDetokenizer, byte_table, make_detokenizer
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.sequence import SamplingParams
from week2_serving.engine.server import ServerConfig, apply_loop_settings, parse_args
from week2_serving.engine.step_stats import StepStats

PROMPTS = [[5, 6, 7, 8], [9, 10, 11], [12, 13, 14, 15, 16]]


def test_busy_periods_are_split_at_idle_and_their_line_parses():
    stats = StepStats()
    assert stats.idle() is None and stats.summary() is None  # nothing ran yet
    stats.step(0.0, 3)
    stats.step(0.0, 5)
    first = stats.idle()
    assert (first.steps, first.tokens) == (2, 8)
    stats.step(0.0, 1)  # a new period
    assert stats.current.steps == 1 and stats.last is first
    found = http_profile.STEP_LINE.findall(first.summary())
    assert found and found[0][0] == "2" and float(found[0][2]) == 4.0  # tokens per step


@pytest.mark.parametrize("value", [0.0, -1.0, 2.0])
def test_switch_interval_out_of_range_is_a_usage_error(value):
    with pytest.raises(ValueError, match="switch_interval"):
        ServerConfig(switch_interval=value)


def test_loop_cpus_takes_only_its_choices(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--loop-cpus", "engine"])
    assert "--loop-cpus" in capsys.readouterr().err
    assert parse_args(["--loop-cpus", "rest"]).loop_cpus == "rest"


def test_loop_settings_set_the_switch_interval_and_keep_the_engine_core_free():
    interval, cpus = sys.getswitchinterval(), os.sched_getaffinity(0)
    engine = {min(cpus)} if len(cpus) > 1 else None
    try:
        apply_loop_settings(ServerConfig(switch_interval=0.0005, loop_cpus="rest"), engine)
        assert sys.getswitchinterval() == pytest.approx(0.0005)
        if engine is not None:
            assert os.sched_getaffinity(0) == cpus - engine
    finally:
        sys.setswitchinterval(interval)
        os.sched_setaffinity(0, cpus)


async def _served_tokens(engine: LLMEngine, params: SamplingParams) -> list[list[int]]:
    bridge = AsyncEngine(engine)
    bridge.start()

    async def one(ids: list[int]) -> list[int]:
        q, out = bridge.submit(engine.make_sequence(ids, params)), []
        while True:
            o = await q.get()
            out += o.new_token_ids
            if o.finished:
                return out

    try:
        return list(await asyncio.gather(*(one(p) for p in PROMPTS)))
    finally:
        bridge.shutdown()


def test_a_short_switch_interval_serves_the_offline_greedy_tokens(tiny_gpt):
    """The levers only move threads and the GIL: the served tokens equal offline generate's,
    and the engine thread's account counts every one of them."""
    cfg = EngineConfig(model=tiny_gpt["hf_dir"], num_blocks=64, dtype="float32", device="cpu")
    engine = LLMEngine(cfg)
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    offline = [o.token_ids for o in engine.generate(PROMPTS, params, use_tqdm=False)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0002)
    try:
        served = asyncio.run(_served_tokens(engine, params))
    finally:
        sys.setswitchinterval(interval)
    assert served == offline


def test_thread_cpu_sees_this_process_main_thread():
    used = http_profile.thread_cpu(os.getpid())
    assert os.getpid() in used and all(v >= 0 for v in used.values())
    split = http_profile.cpu_split(os.getpid(), {}, tokens=10)
    assert split["loop_cpu_us_per_token"] > 0


@pytest.mark.parametrize(
    "kwargs", [{"loads": []}, {"loads": [0]}, {"repeats": 0}, {"variants": ["noequals"]}]
)
def test_http_profile_config_rejects_bad_values(kwargs):
    with pytest.raises(ValueError):
        http_profile.HttpProfileConfig(**kwargs)


def _stream(detok, ids: list[int], rng: random.Random) -> str:
    out, i = [], 0
    while i < len(ids):  # chunks of 1..3 ids, as steps (speculation) deliver them
        k = rng.randint(1, 3)
        out.append(detok.add(ids[i : i + k]))
        i += k
    return "".join(out) + detok.flush()


def test_byte_detokenizer_streams_the_plain_text_on_random_ids(tiny_gpt):
    """Random ids (special tokens, characters split over tokens, invalid UTF-8 included):
    the byte path streams exactly the plain incremental decode's text."""
    tok = AutoTokenizer.from_pretrained(tiny_gpt["hf_dir"])
    fast = make_detokenizer(tok)
    assert isinstance(fast, ByteDetokenizer)  # week 1's tokenizer is byte-level BPE
    rng = random.Random(0)
    for _ in range(150):
        ids = [rng.randrange(len(tok) + 2) for _ in range(rng.randint(1, 30))]  # 2 past the end
        seed = rng.random()
        plain = _stream(Detokenizer(tok), ids, random.Random(seed))
        assert _stream(make_detokenizer(tok), ids, random.Random(seed)) == plain, ids


def test_other_tokenizers_and_the_off_switch_keep_the_plain_detokenizer(tiny_gpt):
    tok = AutoTokenizer.from_pretrained(tiny_gpt["hf_dir"])
    assert byte_table(object()) is None  # no fast tokenizer backend: nothing to read
    fast_detokenizer.set_enabled(False)
    try:
        assert isinstance(make_detokenizer(tok), Detokenizer)
    finally:
        fast_detokenizer.set_enabled(True)
    assert parse_args(["--no-fast-detokenize"]).fast_detokenize is False
