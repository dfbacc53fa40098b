"""The engine's GPU path (cuda_graphs.py, gpu_bench.py), checked on CPU where it can be.

On CPU the decode graphs run with `EagerGraph`, the stand-in with CUDAGraph's capture/replay
pair over the same static buffers: the padding, the buckets, the static-buffer copies and the
scratch block are the same code as on a GPU, so the eager engine's tokens prove them. What
needs CUDA (a real CUDAGraph, bf16 kernels) is at the end, skipped here with the reason.
"""

from __future__ import annotations

import pytest
import torch

from week2_serving.engine import gpu_bench
from week2_serving.engine.attention import gather_slots
from week2_serving.engine.cuda_graphs import (
    CudaGraph,
    DecodeGraphs,
    blocks_bucket,
    capture_sizes,
    make_decode_graphs,
    pick_bucket,
)
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.model_runner import ModelRunner
from week2_serving.engine.sequence import SamplingParams
from week2_serving.engine.server import engine_config, parse_args

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
# shared prefixes (prefix caching), lengths across several context buckets, uneven stops
PROMPTS = ["The list type", "The list type is", "x", "A dictionary is a mapping object that"]
PROMPTS += ["import", "The list type is a mutable", "A dictionary is a mapping object that maps"]
MAX_TOKENS = [12, 5, 16, 8, 4, 10, 6]


def _engine(d, graphs: bool, num_blocks: int = 14, **kw) -> LLMEngine:
    cfg = EngineConfig(
        model=d, device="cpu", dtype="float32", num_blocks=num_blocks, block_size=4,
        max_num_seqs=6, **kw,
    )  # fmt: skip
    eng = LLMEngine(cfg)
    if graphs:  # the CPU stand-in: the graph logic without CUDA (before any step)
        eng.runner.graphs = DecodeGraphs(eng.runner, 6, max_seq_len_to_capture=18)
    return eng


def _greedy(eng: LLMEngine) -> list[list[int]]:
    params = [SamplingParams(max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
    return [o.token_ids for o in eng.generate(PROMPTS, params, use_tqdm=False)]


def test_buckets():
    assert capture_sizes(1) == [1]
    assert capture_sizes(6) == [1, 2, 4, 6]
    assert capture_sizes(32) == [1, 2, 4, 8, 16, 32]
    for bad in (0, -1, True, 2.5):
        with pytest.raises(ValueError, match="max_num_seqs"):
            capture_sizes(bad)
    assert [pick_bucket(n, [1, 2, 4, 6]) for n in (1, 2, 3, 5, 6, 7)] == [1, 2, 4, 6, 6, None]
    # blocks per table, block size 4: the power of two at or above ceil(ctx / 4)
    assert [blocks_bucket(c, 4) for c in (1, 4, 5, 9, 16, 17, 33)] == [1, 1, 2, 4, 4, 8, 16]


def test_graph_decodes_give_the_eager_tokens(tiny_gpt):
    """A mixed workload with prefix caching and preemption (14 blocks of 4 tokens do not hold
    six sequences): decode steps through the static buffers == the eager engine, token for
    token; padded batches, several buckets, and long contexts falling back to eager."""
    d = tiny_gpt["hf_dir"]
    eager, graphed = _engine(d, graphs=False), _engine(d, graphs=True)
    assert _greedy(graphed) == _greedy(eager)
    g = graphed.runner.graphs
    assert g.num_replays > 0 and g.num_eager > 0  # contexts past 18 went eager
    assert g.num_padding_rows > 0 and len(g.graphs) >= 3  # e.g. 3 sequences in the bucket of 4
    assert graphed.scheduler.num_preemptions > 0 and graphed.block_manager.prefix_hits > 0
    assert graphed.block_manager.num_used_blocks == 0


def test_padding_rows_write_only_the_scratch_block(tiny_gpt):
    """Three decodes in the bucket of 4: the real rows' slots change, the padding row writes to
    the scratch block, and every other slot of the pool stays bit-identical."""
    eng = _engine(tiny_gpt["hf_dir"], graphs=True, num_blocks=64)
    for p in PROMPTS[:3]:
        eng.add_request(p, SamplingParams(max_tokens=8, ignore_eos=True))
    eng.step()  # the prefills
    batch = eng.scheduler.schedule()
    assert batch.num_tokens == [1, 1, 1]
    run = eng.runner
    k0, v0 = run.kv.k.clone(), run.kv.v.clone()
    logits = run.execute(batch)  # through the graph of 4 rows
    bs = run.block_size
    longest = max(s.num_computed for s in batch.seqs) + 1
    assert list(run.graphs.graphs) == [(4, blocks_bucket(longest, bs))] and len(logits) == 3
    real = [s.block_table[s.num_computed // bs] * bs + s.num_computed % bs for s in batch.seqs]
    scratch = list(range(run.graphs.scratch * bs, (run.graphs.scratch + 1) * bs))
    others = torch.ones(run.kv.k.shape[1], dtype=torch.bool)
    others[real + scratch] = False
    assert torch.equal(run.kv.k[:, others], k0[:, others])
    assert torch.equal(run.kv.v[:, others], v0[:, others])
    assert not torch.equal(run.kv.k[:, real], k0[:, real])  # the real rows wrote theirs
    assert not torch.equal(run.kv.k[:, scratch[0]], k0[:, scratch[0]])  # the padding row
    assert (run.kv.k[:, scratch[1:]] == 0).all()  # and nothing else of the scratch block
    k_graph = run.kv.k[:, real].clone()
    eager = run.forward(run.prepare(batch))  # the eager step over the same batch
    torch.testing.assert_close(logits, eager)
    torch.testing.assert_close(k_graph, run.kv.k[:, real])


def test_graph_forward_reads_no_values_on_the_host(tiny_gpt):
    """What a CUDA graph needs: fixed shapes and no host read of a tensor's value (a sync).
    On the meta device tensors have shapes but no values, so any such read raises: the
    captured forward runs there; the eager path's attention planning does not."""
    run = ModelRunner(tiny_gpt["hf_dir"], 16, 4, device="meta")
    with torch.inference_mode():
        entry = DecodeGraphs(run, 8, 64).capture(8, 4)
    assert entry.out.is_meta and entry.out.shape == (8, run.cfg.vocab_size)
    with pytest.raises(RuntimeError, match="meta"):  # int(ctx_lens.max()): a host read
        gather_slots(entry.tables, entry.per_row[3], 4)


def test_graphs_are_off_on_cpu_and_with_enforce_eager(tiny_gpt):
    d = tiny_gpt["hf_dir"]
    eng = LLMEngine(EngineConfig(model=d, device="cpu", num_blocks=16))
    assert eng.runner.graphs is None  # on CPU there is no launch overhead to save
    assert eng.runner.kv.k.shape[1] == 16 * eng.config.block_size  # no scratch block either
    cfg = EngineConfig(model=d, device="cpu", enforce_eager=True)
    assert make_decode_graphs(eng.runner, cfg) is None
    assert engine_config(parse_args(["--enforce-eager", "--device", "cpu"])).enforce_eager
    assert not engine_config(parse_args(["--device", "cpu"])).enforce_eager
    for bad in (0, -5, True, 2.5, "8"):
        with pytest.raises(ValueError, match="max_seq_len_to_capture"):
            EngineConfig(model=d, device="cpu", max_seq_len_to_capture=bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_cuda_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match=r"device 'cuda'.*CUDA is not available"):
        EngineConfig(device="cuda")
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        gpu_bench.main(gpu_bench.GpuBenchConfig())


TINY_QWEN = dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2)
TINY_QWEN.update(intermediate_size=128, vocab_size=256, prompt_len=5, block_size=4)


def test_bench_runs_on_cpu():
    """The bench's own code (random model, three runners, cells) on a tiny shape; on CPU the
    'graphs' engine is eager, so it must agree with eager exactly."""
    cfg = gpu_bench.GpuBenchConfig(**TINY_QWEN, batches=[1, 3], max_tokens=4, repeats=2)
    r = gpu_bench.measure(cfg, "cpu")
    assert r["cuda_graphs"] is False and r["graph_replays"] == 0
    assert [(c["impl"], c["batch"]) for c in r["cells"]][:3] == [(i, 1) for i in gpu_bench.IMPLS]
    for c in r["cells"]:
        assert len(c["seconds"]) == 2 and c["min_tok_s"] <= c["median_tok_s"] <= c["max_tok_s"]
    assert all(c["tokens_equal_to_eager"] == 1.0 for c in r["cells"])  # HF fp32 included
    assert "| engine-graphs | 3 |" in gpu_bench.table(r)
    for bad in (dict(batches=[]), dict(repeats=0), dict(num_kv_heads=3), dict(max_tokens=True)):
        with pytest.raises(ValueError):
            gpu_bench.GpuBenchConfig(**bad)


# --- CUDA only -------------------------------------------------------------------------------
def _qwen_on_cuda(tmp_path, dtype: torch.dtype):
    cfg = gpu_bench.GpuBenchConfig(**TINY_QWEN)
    return gpu_bench.random_model(cfg, tmp_path, "cuda", dtype)


def _cuda_engine(folder, dtype: str, eager: bool) -> LLMEngine:
    cfg = EngineConfig(
        model=folder, device="cuda", dtype=dtype, num_blocks=64, block_size=4, max_num_seqs=6,
        enforce_eager=eager,
    )  # fmt: skip
    return LLMEngine(cfg, gpu_bench.IdsOnly())


def _ids_prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, 255, (n,), generator=g).tolist() for n in (3, 7, 1, 12, 5, 9, 4)]


@CUDA
@pytest.mark.gpu
def test_cuda_graphs_equal_eager_and_hf_fp32(tmp_path):
    """float32 on CUDA: HF generate == our eager engine == our engine replaying CUDA graphs."""
    hf = _qwen_on_cuda(tmp_path, torch.float32)
    prompts = _ids_prompts()
    outs = {}
    for eager in (True, False):
        eng = _cuda_engine(tmp_path, "float32", eager)
        # min_tokens: the stop token is banned, as HF's min_new_tokens bans it
        params = [SamplingParams(max_tokens=m, min_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
        outs[eager] = [o.token_ids for o in eng.generate(prompts, params, use_tqdm=False)]
        g = eng.runner.graphs
        assert (g is None) == eager
        if g is not None:
            assert g.num_replays > 0 and isinstance(next(iter(g.graphs.values())).graph, CudaGraph)
    assert outs[False] == outs[True]
    for p, m, out in zip(prompts, MAX_TOKENS, outs[False]):
        ids = torch.tensor([p], device="cuda")
        with torch.no_grad():
            ref = hf.generate(ids, max_new_tokens=m, min_new_tokens=m, do_sample=False)
        assert out == ref[0, len(p) :].tolist()


@CUDA
@pytest.mark.gpu
def test_cuda_graphs_bf16_follow_hf_bf16_greedy(tmp_path):
    """bf16 on CUDA with graphs: each token is HF's bf16 argmax or within bf16 noise of it (HF
    scoring the engine's own text), nearly all exactly, the first after each prompt exactly."""
    hf = _qwen_on_cuda(tmp_path, torch.bfloat16)
    eng = _cuda_engine(tmp_path, "bfloat16", eager=False)
    prompts = _ids_prompts()
    outs = eng.generate(prompts, SamplingParams(max_tokens=16, ignore_eos=True), use_tqdm=False)
    assert eng.runner.graphs.num_replays > 0
    same = total = 0
    for p, o in zip(prompts, outs):
        seq = torch.tensor([p + o.token_ids], device="cuda")
        with torch.no_grad():
            logits = hf(seq).logits[0, len(p) - 1 : -1].float()  # (16, V)
            first = hf.generate(seq[:, : len(p)], max_new_tokens=1, do_sample=False)[0, -1]
        picked = logits.gather(1, torch.tensor(o.token_ids, device="cuda")[:, None])[:, 0]
        best = logits.max(dim=-1).values
        assert (best - picked <= 0.02 * (logits.max() - logits.min())).all()
        same, total = same + int((picked == best).sum()), total + len(o.token_ids)
        assert o.token_ids[0] == int(first)
    assert same / total >= 0.9
