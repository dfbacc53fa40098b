"""INT4 AWQ of an HF Llama folder with autoawq, on CPU. Runs in vLLM's venv (make setup-awq).

    .venvs/vllm/bin/python -m week2_serving.quant.awq_worker --model runs/week1/hf-model \
        --out runs/week2/quantized/int4-awq --data runs/week1/data-bpe --group-size 64

Usually started by `python -m week2_serving.quant.quantize`. `--model` may be a hub id (from the hub
cache with --offline). AWQ (activation-aware weight
quantization) looks at calibration activations to find, per input channel, a scale that
protects the weights that meet large activations, then rounds weights to 4 bits in groups of
`group_size` input channels, each group with its own scale and zero point. The saved folder
(GEMM packing) is what vLLM's `awq` quantization loads.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from week2_serving.quant.shared import finish_variant, token_windows, worker_args


def clip_supported(config: dict) -> bool:
    """autoawq's weight-clipping search walks output channels in blocks of 64 (or 256) and
    asserts that they tile every Linear's output width; the tiny test model's v_proj has 32."""
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or config["num_attention_heads"]
    outs = [kv_heads * head_dim, config["hidden_size"], config["intermediate_size"]]
    return all(n % 64 == 0 for n in outs)


def quantize_awq(
    model_dir: str, out: str, data: str, num_calib: int, calib_len: int, group_size: int, seed: int
) -> dict:
    import awq.modules.linear.gemm as awq_gemm
    from awq import AutoAWQForCausalLM
    from transformers import AutoTokenizer

    # autoawq's GEMM layer would pick its Triton kernels, which need a GPU: use the plain path.
    awq_gemm.TRITON_AVAILABLE = False
    torch.manual_seed(seed)
    calib = token_windows(data, "train", num_calib, calib_len, seed=seed)
    clip = clip_supported(json.loads((Path(model_dir) / "config.json").read_text()))
    t0 = time.perf_counter()
    model = AutoAWQForCausalLM.from_pretrained(model_dir, device_map="cpu")
    tok = AutoTokenizer.from_pretrained(model_dir)
    quant_config = {"zero_point": True, "q_group_size": group_size, "w_bit": 4, "version": "GEMM"}
    model.quantize(
        tok,
        quant_config=quant_config,
        calib_data=calib,  # token ids: no hub dataset, no re-tokenization
        max_calib_samples=len(calib),
        max_calib_seq_len=calib_len,
        n_parallel_calib_samples=16,
        apply_clip=clip,  # also search a per-group clipping range (skipped where unsupported)
    )
    model.save_quantized(out)
    return {
        "method": "autoawq",
        "quant_config": quant_config,
        "apply_clip": clip,
        "calibration": {"split": "train", "windows": len(calib), "tokens_per_window": calib_len},
        "quantize_seconds": time.perf_counter() - t0,
        "torch_version": torch.__version__,
    }


def main(argv: list[str] | None = None) -> dict:
    a = worker_args(argv, __doc__)
    if a.group_size is None:
        raise ValueError(
            "--group-size is required (week2_serving.quant.quantize picks it from config)"
        )
    info = quantize_awq(a.model, a.out, a.data, a.num_calib, a.calib_len, a.group_size, a.seed)
    finish_variant(Path(a.out), Path(a.model), info)
    return info


if __name__ == "__main__":
    main()
