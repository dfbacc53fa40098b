"""Week 2b: prefix-cache keys are a SHA-256 chain, and a cache salt separates who shares."""

from __future__ import annotations

import builtins

import pytest

from week2_serving.engine.block_manager import BlockManager, block_key
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.sequence import SamplingParams, Sequence


def computed(bm: BlockManager, tokens: list[int], salt: str | None = None) -> Sequence:
    """A sequence admitted, its prompt computed and its full blocks registered."""
    s = Sequence(tokens, SamplingParams(), cache_salt=salt)
    bm.allocate_prefix(s)
    bm.allocate_slots(s, len(s) - s.num_computed)
    s.num_computed = len(s)
    bm.register_full_blocks(s)
    return s


def colliding_hash(monkeypatch) -> None:
    """Every Python hash() is 0 from now on: a key built on hash() would collide everywhere."""
    monkeypatch.setattr(builtins, "hash", lambda obj: 0)


# --- the key ---------------------------------------------------------------------------------
def test_keys_do_not_depend_on_python_hash(monkeypatch):
    before = [block_key(None, (1, 2, 3, 4), None), block_key(None, (5, 6, 7, 8), None)]
    colliding_hash(monkeypatch)
    assert hash((None, (1, 2, 3, 4))) == hash((None, (5, 6, 7, 8)))  # the old key: one value
    after = [block_key(None, (1, 2, 3, 4), None), block_key(None, (5, 6, 7, 8), None)]
    assert after == before and after[0] != after[1]
    assert len(after[0]) == 32  # SHA-256


def test_the_key_chains_the_whole_prefix():
    first_a, first_b = block_key(None, (1, 2), None), block_key(None, (9, 9), None)
    # the same block after different prefixes gets different keys
    assert block_key(first_a, (3, 4), None) != block_key(first_b, (3, 4), None)
    assert block_key(first_a, (3, 4), None) == block_key(first_a, (3, 4), None)
    # fixed-width packing: (1, 23) and (12, 3) are different bytes
    assert block_key(None, (1, 23), None) != block_key(None, (12, 3), None)


def test_different_blocks_never_share_even_when_python_hashes_collide(monkeypatch):
    colliding_hash(monkeypatch)
    bm = BlockManager(num_blocks=16, block_size=4)
    a = computed(bm, list(range(9)))
    b = Sequence([50 + t for t in range(9)], SamplingParams())  # other tokens, same hash()
    assert bm.allocate_prefix(b) == 0 and b.block_table == []
    same = Sequence(list(range(9)), SamplingParams())
    assert bm.allocate_prefix(same) == 8 and same.block_table == a.block_table[:2]
    bm.check_invariants([a, same])


# --- the salt --------------------------------------------------------------------------------
def test_same_salt_shares_different_salts_and_no_salt_do_not():
    bm = BlockManager(num_blocks=32, block_size=4)
    tokens = list(range(13))
    a = computed(bm, tokens, salt="tenant-a")
    same = Sequence(tokens, SamplingParams(), cache_salt="tenant-a")
    assert bm.allocate_prefix(same) == 12 and same.block_table == a.block_table[:3]
    for salt in ("tenant-b", None):
        other = Sequence(tokens, SamplingParams(), cache_salt=salt)
        assert bm.allocate_prefix(other) == 0, salt
    # the salt enters the first key, so every key of the chain differs
    b = computed(bm, tokens, salt="tenant-b")
    assert not set(a.block_hashes) & set(b.block_hashes)
    assert len(b.block_hashes) == len(a.block_hashes) == 3
    bm.check_invariants([a, same, b])


# --- the engine ------------------------------------------------------------------------------
PROMPTS = [  # pairs with a shared prefix; one request at a time, so the second finds the first's
    "The list type supports many operations",
    "The list type supports many operations such as append",
    "A dictionary is a mapping object that",
    "A dictionary is a mapping object that maps keys",
]


@pytest.fixture(scope="module")
def engine_cfg(tiny_gpt):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_gpt["hf_dir"])

    def make(**kw) -> LLMEngine:
        cfg = dict(model=tiny_gpt["hf_dir"], num_blocks=128, block_size=4, max_num_seqs=1)
        cfg["dtype"] = "float32"  # compared with HF in float32 (auto: bf16 on a BF16 CPU)
        return LLMEngine(EngineConfig(**{**cfg, **kw}), tokenizer=tok)

    return make


def greedy(eng: LLMEngine) -> list[list[int]]:
    sp = SamplingParams(max_tokens=12, ignore_eos=True)
    return [o.token_ids for o in eng.generate(PROMPTS, sp, use_tqdm=False)]


def test_engine_outputs_and_hits_unchanged_when_python_hashes_collide(engine_cfg, monkeypatch):
    reference = greedy(engine_cfg(enable_prefix_caching=False))
    clean = engine_cfg()
    assert greedy(clean) == reference
    eng = engine_cfg()
    colliding_hash(monkeypatch)
    assert greedy(eng) == reference
    monkeypatch.undo()
    # the same (real) prefixes are shared as without the collisions, and no others
    assert eng.block_manager.prefix_hits == clean.block_manager.prefix_hits > 0


def test_engine_cache_salt_same_shares_other_does_not(engine_cfg):
    eng = engine_cfg()
    sp = SamplingParams(max_tokens=4, ignore_eos=True)
    prompt = "for loops in Python iterate over the items of any sequence"

    def run(salt: str | None) -> Sequence:
        seq = eng.add_request(prompt, sp, cache_salt=salt)
        while eng.has_unfinished():
            eng.step()
        return seq

    first = run("a")
    assert first.num_cached_prompt == 0
    again, other, unsalted = run("a"), run("b"), run(None)
    assert again.num_cached_prompt >= 4 and other.num_cached_prompt == 0
    assert unsalted.num_cached_prompt == 0
    assert again.output_token_ids == other.output_token_ids == first.output_token_ids
    with pytest.raises(ValueError, match="cache_salt=''"):
        eng.add_request(prompt, sp, cache_salt="")
