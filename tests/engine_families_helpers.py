"""Tiny random-weight models of every family the engine serves, built from transformers' own
config classes and saved with save_pretrained (safetensors), and HF's greedy reference.

Tiny on purpose (2 layers, width 64, vocab 512): each builds and runs in well under a second,
and a model this small still exercises every switch (GQA, biases, q/k norm, tied embeddings,
RoPE scaling, learned positions, sharded weights).
"""

from __future__ import annotations

from pathlib import Path

import torch

VOCAB = 512  # the size of tiny_gpt's BPE tokenizer, so its tokenizer fits any of these
COMMON = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2, initializer_range=0.1)
LLAMA_LIKE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # GQA: 2 query heads per K/V head
    max_position_embeddings=256,
    **COMMON,
)


def family_configs() -> dict:
    """Family name -> a transformers config of that architecture (random weights follow)."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    llama3 = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,  # short, so the scaling bends real frequencies
    }
    return {
        # Llama 3.2-style: llama3 RoPE scaling, GQA, tied embeddings
        "llama3": LlamaConfig(**LLAMA_LIKE, rope_parameters=llama3, tie_word_embeddings=True),
        # Mistral: a sliding window (narrower than the context: it bounds max_model_len)
        "mistral": MistralConfig(**LLAMA_LIKE, sliding_window=128, tie_word_embeddings=False),
        # Qwen2.5-style: Q/K/V biases, tied embeddings; saved in shards below
        "qwen2": Qwen2Config(**LLAMA_LIKE, tie_word_embeddings=True),
        # Qwen3: q/k RMSNorm per head, head_dim from the config (not hidden / heads)
        "qwen3": Qwen3Config(**LLAMA_LIKE, head_dim=32, tie_word_embeddings=False),
        # GPT-2: learned positions, LayerNorm, GELU, Conv1D weights
        "gpt2": GPT2Config(n_embd=64, n_layer=2, n_head=4, n_positions=256, **COMMON),
    }


def build(name: str, config, folder: Path, seed: int = 0) -> Path:
    """A random-weight model of `config` saved in `folder` (qwen2 in several shards)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    if name == "qwen2":  # nonzero biases, so a dropped bias would show
        with torch.no_grad():
            for layer in model.model.layers:
                for p in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    p.bias.normal_(0, 0.1)
    shard = "60KB" if name == "qwen2" else "100MB"
    model.save_pretrained(folder, max_shard_size=shard)
    return folder


def hf_greedy(folder: Path, prompts: list[list[int]], max_tokens: list[int], dtype) -> list:
    """HF generate's greedy tokens for each prompt, one prompt at a time (no padding)."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    out = []
    for p, m in zip(prompts, max_tokens):
        ids = torch.tensor([p])
        with torch.no_grad():
            ref = hf.generate(
                ids, max_new_tokens=m, min_new_tokens=m, do_sample=False, pad_token_id=0
            )
        out.append(ref[0, len(p) :].tolist())
    return out


def teacher_forced(folder: Path, prompts: list[list[int]], refs: list[list[int]], dtype):
    """Along each reference output (HF float32's greedy tokens): every context prompt +
    ref[:i], the token ref[i], HF float32's top-2 logit gap there, and the token HF in `dtype`
    picks there. Returns (contexts, tokens, gaps, HF picks), flat over all prompts."""
    from transformers import AutoModelForCausalLM

    fp32 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    other = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    contexts, tokens, gaps, picks = [], [], [], []
    for p, r in zip(prompts, refs):
        ids = torch.tensor([p + r])
        with torch.no_grad():  # the logits that chose r[0], ..., r[-1]
            logits = fp32(ids).logits[0, len(p) - 1 : -1]
            picks += other(ids).logits[0, len(p) - 1 : -1].argmax(-1).tolist()
        top2 = logits.topk(2).values
        gaps += (top2[:, 0] - top2[:, 1]).tolist()
        contexts += [p + r[:i] for i in range(len(r))]
        tokens += r
    return contexts, tokens, gaps, picks


def agreement(a: list[list[int]], b: list[list[int]]) -> float:
    """Greedy agreement of two runs: the common prefix of each pair of outputs, as a share of
    all tokens (after the first difference the contexts differ, so later tokens say nothing)."""
    same = 0
    for x, y in zip(a, b):
        n = 0
        while n < min(len(x), len(y)) and x[n] == y[n]:
            n += 1
        same += n
    return same / max(1, sum(len(x) for x in a))


class IdTokenizer:
    """Token-id prompts only: what the engine asks of a tokenizer when given ids."""

    eos_token_id = None
    chat_template = None

    def encode(self, text: str) -> list[int]:
        raise ValueError("this test tokenizer takes token ids, not text")

    def decode(self, ids: list[int], **kw) -> str:
        return " ".join(map(str, ids))
