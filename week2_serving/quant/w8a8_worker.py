"""INT8 W8A8 of an HF Llama folder with llm-compressor, on CPU. Runs in .venvs/quant (make
setup-quant): llm-compressor pins versions that clash with vLLM's venv.

    .venvs/quant/bin/python -m week2_serving.quant.w8a8_worker --model runs/week1/hf-model \
        --out runs/week2/quantized/int8-w8a8 --data runs/week1/data-bpe

Usually started by `python -m week2_serving.quant.quantize`. `--model` may be a hub id (from the hub
cache with --offline). The recipe is llm-compressor's usual
W8A8: SmoothQuant first moves part of each activation outlier into the next layer's weights
(activations become easier to round to 8 bits), then GPTQ rounds every Linear weight to int8,
one scale per output channel, correcting the rounding error column by column with calibration
statistics. Activations are quantized to int8 per token at run time (dynamic), so inference
uses int8 × int8 matmuls. lm_head (tied to the embedding here) stays in full precision. Saved
in compressed-tensors format, which vLLM loads with no extra flag.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from week2_serving.quant.shared import finish_variant, token_windows, worker_args


def allow_cpu_only() -> None:
    """llm-compressor pins its cached activations to page-locked memory for fast GPU copies;
    without a GPU `pin_memory()` raises, and pinning buys nothing on CPU: make it a no-op."""
    from llmcompressor.pipelines.cache import IntermediatesCache

    IntermediatesCache.pin_memory = lambda self, *args, **kwargs: None


def quantize_w8a8(
    model_dir: str, out: str, data: str, num_calib: int, calib_len: int, seed: int
) -> dict:
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.gptq import GPTQModifier
    from llmcompressor.modifiers.transform.smoothquant import SmoothQuantModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    allow_cpu_only()
    torch.manual_seed(seed)
    calib = token_windows(data, "train", num_calib, calib_len, seed=seed)
    dataset = Dataset.from_dict(
        {"input_ids": calib, "attention_mask": [[1] * len(w) for w in calib]}
    )
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(model_dir)
    recipe = [
        SmoothQuantModifier(smoothing_strength=0.8),
        GPTQModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
    ]
    oneshot(
        model=model,
        tokenizer=tok,
        dataset=dataset,
        recipe=recipe,
        num_calibration_samples=len(calib),
        max_seq_length=calib_len,
        shuffle_calibration_samples=False,
    )
    model.save_pretrained(out, save_compressed=True)
    return {
        "method": "llm-compressor SmoothQuant(0.8) + GPTQ W8A8",
        "scheme": "W8A8: int8 weights per output channel (symmetric), int8 activations per "
        "token (dynamic, symmetric); lm_head not quantized",
        "calibration": {"split": "train", "windows": len(calib), "tokens_per_window": calib_len},
        "quantize_seconds": time.perf_counter() - t0,
        "torch_version": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    a = worker_args(argv, __doc__)
    info = quantize_w8a8(a.model, a.out, a.data, a.num_calib, a.calib_len, a.seed)
    finish_variant(Path(a.out), Path(a.model), info)
    return info


if __name__ == "__main__":
    main()
