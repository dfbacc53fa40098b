"""Shared by tests/test_week2_engine_lora*.py: a tiny random Llama (with a tokenizer), peft
adapters on it with random nonzero B, and the merged-model reference (peft merge_and_unload
run through HF generate).

Tiny on purpose (2 layers, width 64, vocab 320): every test here runs in seconds on 2 cores.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

VOCAB = 320


def make_base(folder: Path, seed: int = 0) -> Path:
    """A random LlamaForCausalLM (GQA: 4 query heads, 2 K/V heads) and a byte-level BPE
    tokenizer, saved as an HF folder the engine can load."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(["the adapter serves a request in one batch"] * 20, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(folder)
    return folder


def make_adapter(
    base: Path, folder: Path, r: int, targets: list[str], seed: int, rslora: bool = False
) -> Path:
    """A peft LoRA on `base` with random A and B (B nonzero, so the adapter changes tokens)."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM.from_pretrained(base)
    cfg = LoraConfig(
        r=r, lora_alpha=2 * r, target_modules=targets, init_lora_weights=False, use_rslora=rslora
    )
    peft_model = get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # large enough to change the greedy tokens
                p.normal_(0, 0.5)
    peft_model.save_pretrained(folder)
    return folder


def merged_generate(
    base: Path, adapter: Path | None, prompts: list[list[int]], n: int
) -> list[list[int]]:
    """Greedy tokens of the merged model (peft merge_and_unload), one prompt at a time."""
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    outs = []
    for p in prompts:
        ids = torch.tensor([p])
        got = model.generate(
            ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0
        )
        outs.append(got[0, len(p) :].tolist())
    return outs


ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# name -> (rank, target modules, rsLoRA): different ranks, partial targets, both scalings
ADAPTERS = {
    "all4": (4, ALL, False),
    "qv8": (8, ["q_proj", "v_proj"], True),
    "mlp2": (2, ["gate_proj", "down_proj", "o_proj"], False),
}


@pytest.fixture(scope="session")
def lora_folders(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny base and the three ADAPTERS on it, as folders (built once per session)."""
    root = tmp_path_factory.mktemp("lora")
    base = make_base(root / "base")
    paths = {
        name: make_adapter(base, root / name, r, targets, seed=i + 1, rslora=rs)
        for i, (name, (r, targets, rs)) in enumerate(ADAPTERS.items())
    }
    return {"base": base, "paths": paths, "root": root}


def lora_engine(folders: dict, **lora):
    """Our engine on the tiny base serving every adapter: 2 slots for 3 adapters, 4-token
    blocks, prefix caching on, prefills in chunks of 12 tokens next to the decodes."""
    from week2_serving.engine.llm_engine import EngineConfig, LLMEngine
    from week2_serving.engine.lora.config import LoRAConfig

    modules = {n: str(p) for n, p in folders["paths"].items()}
    cfg = LoRAConfig(modules, **{"max_loras": 2, "max_lora_rank": 8, **lora})
    return LLMEngine(
        EngineConfig(
            model=folders["base"],
            device="cpu",
            dtype="float32",  # equality with HF's float32 (auto is bf16 on a BF16 CPU)
            num_blocks=64,
            block_size=4,
            max_num_batched_tokens=12,
            enable_prefix_caching=True,
            lora=cfg,
        )
    )
