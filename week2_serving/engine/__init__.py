"""Our own serving engine: paged KV cache, continuous batching, prefix caching (week 2b).

Read in this order: sequence.py -> block_manager.py -> scheduler.py -> kv_cache.py ->
attention.py -> model_runner.py -> sampler.py -> llm_engine.py (metrics.py and errors.py on the
side; lora/ for multi-LoRA), then the server:
protocol.py -> async_engine.py -> detokenizer.py -> guards.py -> responses.py -> api.py ->
server.py (the command line).

The names others import are listed below and loaded on first use, so that importing the
pure-Python parts (`week2_serving.engine.scheduler`) does not load torch:

    from week2_serving.engine import EngineConfig, LLMEngine, SamplingParams
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "LLMEngine": "llm_engine",
    "EngineConfig": "llm_engine",
    "StepOutput": "llm_engine",
    "RequestOutput": "llm_engine",
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
