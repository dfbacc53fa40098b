"""Named commands the routes run on the engine between two steps: reset the prefix cache,
load or unload a LoRA adapter, render the metrics.

Named, with plain arguments, rather than closures, because a closure cannot cross a process
boundary: the in-thread bridge (`AsyncEngine.command`) and the engine core process
(`engine_core.EngineCore`) both look the name up here and run the same function, so a route
behaves the same whichever bridge serves it. An exception a command raises reaches the route
that asked, as the same type (the routes map it to a 4xx).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from week2_serving.engine.cache_admin import reset_prefix_cache
from week2_serving.engine.llm_engine import LLMEngine
from week2_serving.engine.lora_routes import LoadLoRARequest, load, unload


def _reset_prefix_cache(engine: LLMEngine) -> bool:
    return reset_prefix_cache(engine.block_manager)


def _load_lora(engine: LLMEngine, served_name: str, body: LoadLoRARequest) -> None:
    load(engine.lora, served_name, body)


def _metrics(engine: LLMEngine) -> str:
    return engine.metrics.exposition()


COMMANDS: dict[str, Callable[..., Any]] = {
    "reset_prefix_cache": _reset_prefix_cache,  # -> False while requests run (409)
    "load_lora": _load_lora,  # (served_name, LoadLoRARequest); APIError 400/404
    "unload_lora": unload,  # (name,); APIError 404/409
    "metrics": _metrics,  # -> Prometheus text
}


def run_command(engine: LLMEngine, name: str, args: tuple) -> Any:
    """COMMANDS[name](engine, *args); a name not in the table is a ValueError listing them."""
    fn = COMMANDS.get(name)
    if fn is None:
        raise ValueError(f"unknown engine command {name!r}; use one of {sorted(COMMANDS)}")
    return fn(engine, *args)
