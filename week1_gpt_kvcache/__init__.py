"""Week 1: a GPT from scratch (GPT-2 and Llama presets), the KV cache, and the HF export.

Libraries: `model` (GPTConfig, GPT, presets), `kvcache`, `tokenizer`, `corpus` (text and token
files), `training` (schedule, optimizer, losses), `checkpoint` (a trained model back from its
file), `hf_convert` (our GPT <-> transformers), `generate` (decoding with or without the cache).
Scripts (`python -m week1_gpt_kvcache.<name>`): prepare, train, generate, export, bench.
What later weeks use is importable from here.
"""

from week1_gpt_kvcache.checkpoint import load_model_and_tokenizer
from week1_gpt_kvcache.hf_convert import from_hf_folder, to_hf_model
from week1_gpt_kvcache.kvcache import KVCache, kv_cache_bytes
from week1_gpt_kvcache.model import GPT, GPTConfig, RMSNorm, make_config

__all__ = [
    "GPT",
    "GPTConfig",
    "KVCache",
    "RMSNorm",
    "from_hf_folder",
    "kv_cache_bytes",
    "load_model_and_tokenizer",
    "make_config",
    "to_hf_model",
]
