"""Our own serving engine: paged KV cache, continuous batching, prefix caching (week 2b).

Read in this order: sequence.py -> block_manager.py -> scheduler.py -> models/ (the HF
checkpoints it loads) -> kv_cache.py (kv_quant.py: int8 / fp8) -> attention.py ->
model_runner.py (step_plan.py: its inputs by tensor ops; cuda_graphs.py: decode replayed from
CUDA graphs on a GPU) -> sampler.py -> engine_config.py ->
llm_engine.py (metrics.py and errors.py on the side). The extensions: spec/ (speculative
decoding), lora/ (multi-LoRA), structured.py (JSON schema / regex / choice). The server:
protocol.py -> async_engine.py -> detokenizer.py -> guards.py -> responses.py -> serving.py ->
api.py -> server.py (the command line); with --engine-process the engine runs in a child process:
bridge.py -> engine_commands.py -> engine_core.py -> core_client.py. Benchmarks: bench.py (`make
week2-engine`), profile.py, levers.py, spec_bench.py, kv_bench.py, lora_bench.py,
structured_bench.py, gpu_bench.py (a GPU only).

The names others import are listed below and loaded on first use, so that importing the
pure-Python parts (`week2_serving.engine.scheduler`) does not load torch:

    from week2_serving.engine import EngineConfig, LLMEngine, SamplingParams
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LLMEngine": "llm_engine",
    "EngineConfig": "engine_config",
    "StepOutput": "engine_config",
    "RequestOutput": "engine_config",
    "SamplingParams": "sequence",
    "Sequence": "sequence",
    "POLICIES": "scheduler",
    "EngineFull": "errors",
    "EngineDead": "errors",
    "EngineMetrics": "metrics",
    "CONTENT_TYPE": "metrics",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
