"""The multi-LoRA HTTP API, as vLLM's: adapters listed in /v1/models with their parent, loaded
and unloaded at runtime.

    POST /v1/load_lora_adapter    {"lora_name": "sql", "lora_path": "runs/week3/sft-sql/adapter"}
    POST /v1/unload_lora_adapter  {"lora_name": "sql"}

A request picks its adapter with `"model": "<lora_name>"` (serving.GenerationRoutes.check_model).
Loading reads the folder on the engine thread, between two steps. Refusals: 400 for a name
that is taken or invalid, an adapter the engine cannot serve (rank above --max-lora-rank, a
module it cannot target, another base model's shapes); 404 for a folder that does not exist
or an adapter that is not loaded; 409 for unloading an adapter that requests are still using.

Wiring, in `api.create_app`: `add_lora_routes(app, aeng, engine, served_name)`.
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from pydantic import Field, StrictStr

from week2_serving.engine.bridge import EngineBridge
from week2_serving.engine.llm_engine import LLMEngine
from week2_serving.engine.lora.manager import LoRAManager
from week2_serving.engine.protocol import APIError, ClosedModel, ShortStr


class LoadLoRARequest(ClosedModel):
    lora_name: ShortStr
    lora_path: Annotated[StrictStr, Field(min_length=1, max_length=4096)]


class UnloadLoRARequest(ClosedModel):
    lora_name: ShortStr


def lora_cards(manager: LoRAManager | None, parent: str, max_model_len: int) -> list[dict]:
    """/v1/models entries of the loaded adapters (vLLM's shape: `root` the folder, `parent`)."""
    if manager is None:
        return []
    return [
        {
            "id": reg.name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "week2-engine",
            "root": reg.path,
            "parent": parent,
            "max_model_len": max_model_len,
        }
        for reg in list(manager.registry.values())  # the engine thread may add one meanwhile
    ]


def load(manager: LoRAManager, served_name: str, body: LoadLoRARequest) -> None:
    """Register the adapter (on the engine thread) or raise the APIError the client gets."""
    if body.lora_name == served_name:
        raise APIError(400, f"{body.lora_name!r} is the base model's name; pick another")
    try:
        manager.add(body.lora_name, body.lora_path)
    except FileNotFoundError as e:
        raise APIError(404, str(e), "NotFoundError", "lora_path") from e
    except (ValueError, OSError) as e:  # taken, bad name, rank, modules, shapes, a bad file
        raise APIError(400, str(e), param="lora_name" if "name" in str(e) else "lora_path") from e


def unload(engine: LLMEngine, name: str) -> None:
    """Forget an adapter no request uses (on the engine thread), or raise the APIError."""
    manager = engine.lora
    if manager is None or name not in manager.registry:
        raise APIError(404, f"The lora adapter '{name}' cannot be found.", "NotFoundError")
    users = [s.request_id for s in engine.requests.values() if s.lora_name == name]
    if users:
        message = f"LoRA {name!r} is in use by {len(users)} request(s); unload it when they end"
        raise APIError(409, message, "ConflictError", "lora_name")
    engine.scheduler.drop_padding(lora_name=name)  # static-padded rows of finished requests
    manager.remove(name)


def add_lora_routes(app: FastAPI, aeng: EngineBridge, engine, served_name: str) -> None:
    """POST /v1/load_lora_adapter and /v1/unload_lora_adapter (400 when LoRA is off)."""

    def manager() -> LoRAManager:
        if engine.lora is None:
            raise APIError(400, "LoRA is off: start the server with --enable-lora")
        return engine.lora

    async def load_adapter(body: LoadLoRARequest) -> PlainTextResponse:
        manager()
        await aeng.command("load_lora", served_name, body)  # engine_commands.py
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' added successfully.")

    async def unload_adapter(body: UnloadLoRARequest) -> PlainTextResponse:
        manager()
        await aeng.command("unload_lora", body.lora_name)
        return PlainTextResponse(f"Success: LoRA adapter '{body.lora_name}' removed successfully.")

    app.post("/v1/load_lora_adapter")(load_adapter)
    app.post("/v1/unload_lora_adapter")(unload_adapter)
