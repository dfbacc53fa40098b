"""Our engine's --device / --dtype / hub-id paths, checked on CPU with no network.

bf16 is checked on CPU: the same casts (weights, KV cache, RoPE tables, attention mask) run
on a GPU; tests/test_gpu.py repeats the comparison on CUDA where there is one.
"""

from __future__ import annotations

import pytest
import torch

from common.device import pick_inference_dtype
from tests.fake_hub import make_fake_hub
from week2_serving.engine.attention import make_group
from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
from week2_serving.engine.sequence import SamplingParams
from week2_serving.engine.server import engine_config, parse_args

PROMPTS = ["The list type", "x", "A dictionary is a mapping object that", "import"]
MAX_TOKENS = [16, 7, 24, 12]


def _greedy(eng: LLMEngine) -> list[list[int]]:
    params = [SamplingParams(max_tokens=m, ignore_eos=True) for m in MAX_TOKENS]
    return [o.token_ids for o in eng.generate(PROMPTS, params, use_tqdm=False)]


def test_server_resolves_a_hub_id_from_the_cache(tiny_gpt, tmp_path, monkeypatch):
    """`--model testorg/tiny --offline` loads the cached snapshot: same tokens as the folder."""
    snapshot = make_fake_hub(tmp_path / "hf", tiny_gpt["hf_dir"], "testorg/tiny", monkeypatch)
    a = parse_args(
        ["--model", "testorg/tiny", "--offline", "--device", "cpu", "--dtype", "float32"]
    )
    cfg = engine_config(a)
    cfg.num_blocks = 128
    from_hub = LLMEngine(cfg)
    assert from_hub.config.model == "testorg/tiny" and a.offline is True
    direct = LLMEngine(
        EngineConfig(model=tiny_gpt["hf_dir"], device="cpu", num_blocks=128, dtype="float32")
    )
    assert _greedy(from_hub) == _greedy(direct)
    assert (snapshot / "config.json").is_file()


def test_hub_id_not_cached_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty" / "hub"))
    with pytest.raises(FileNotFoundError, match="testorg/missing.*offline"):
        LLMEngine(EngineConfig(model="testorg/missing", offline=True, device="cpu"))


def test_defaults_are_auto_and_cpu_here():
    a = parse_args([])
    assert (a.device, a.dtype, a.offline) == ("auto", "auto", None)
    if not torch.cuda.is_available():
        cfg = engine_config(a)
        cpu = torch.device("cpu")  # auto follows this CPU's BF16 flags (test_week2_engine_families)
        assert cfg.torch_device == cpu and cfg.torch_dtype == pick_inference_dtype(cpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_refused_at_startup():
    with pytest.raises(SystemExit, match=r"--device 'cuda'.*CUDA is not available"):
        engine_config(parse_args(["--device", "cuda"]))
    with pytest.raises(SystemExit, match=r"--device 'cuda:3'"):
        engine_config(parse_args(["--device", "cuda:3"]))


def test_bad_device_and_dtype_are_named(capsys):
    with pytest.raises(SystemExit, match=r"--device 'tpu'.*unknown device"):
        engine_config(parse_args(["--device", "tpu"]))
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        parse_args(["--dtype", "int3"])
    assert "invalid choice: 'int3'" in capsys.readouterr().err


def test_attention_mask_follows_the_dtype():
    g = make_group([[0, 1]], [5], [5], [0], 4, "cpu", torch.bfloat16)
    assert g.mask.dtype == torch.bfloat16
    assert torch.isinf(g.mask).any() and (g.mask == 0).any()  # causal: both kinds present


def test_bf16_engine_follows_hf_bf16_greedy(tiny_gpt):
    """At bf16 the engine (fused QKV, paged SDPA) and HF round differently, so a greedy tie can
    break the other way; each token the engine picks must be HF's argmax or within bf16 noise of
    it, with HF scoring the engine's own sequence (teacher forcing)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny_gpt["hf_dir"]
    tok = AutoTokenizer.from_pretrained(d)
    eng = LLMEngine(EngineConfig(model=d, device="cpu", dtype="bfloat16", num_blocks=128), tok)
    assert eng.runner.kv.k.dtype == torch.bfloat16
    assert eng.runner.weights.layers[0].qkv_w.dtype == torch.bfloat16
    hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).eval()
    outs = _greedy(eng)
    same = total = 0
    for prompt, out in zip(PROMPTS, outs):
        ids = tok(prompt).input_ids
        seq = torch.tensor([ids + out])  # (1, T)
        with torch.no_grad():
            logits = hf(seq).logits[0, len(ids) - 1 : -1].float()  # (new, V): predicts out
        picked = logits.gather(1, torch.tensor(out)[:, None])[:, 0]  # (new,)
        best = logits.max(dim=-1).values
        spread = logits.max() - logits.min()
        # bf16 keeps 8 bits of mantissa: a gap of ~2% of the logit range is within its noise
        assert (best - picked <= 0.02 * spread).all(), (prompt, (best - picked).max(), spread)
        same += int((picked == best).sum())
        total += len(out)
    assert same / total >= 0.9  # nearly every token is HF's own greedy choice
    # and the first token after each prompt matches HF's bf16 generate exactly
    for prompt, out in zip(PROMPTS, outs):
        ids = tok(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            ref = hf.generate(ids, max_new_tokens=1, do_sample=False)
        assert out[0] == int(ref[0, -1])
