"""`POST /reset_prefix_cache`: forget every cached prefix, as vLLM's route of that name does.

Benchmarks call it between repeated runs, so that run 2 does not find run 1's prompts cached
and measure a warmer server than run 1 did. Only blocks that no sequence holds are forgotten
(their contents stay, unreachable, until reused); while any request runs, the reset is refused
(409), as vLLM refuses it while blocks are in use. The counters of /metrics (prefix-cache
queries and hits) are not touched: counters only grow.

Wiring, in `api.create_app`: `add_cache_routes(app, aeng, engine)`.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from week2_serving.engine.block_manager import BlockManager
from week2_serving.engine.bridge import EngineBridge
from week2_serving.engine.protocol import error_body


def reset_prefix_cache(bm: BlockManager) -> bool:
    """Drop every prefix-cache entry; False (nothing changed) while any block is in use."""
    if bm.num_used_blocks:
        return False
    for block in bm.blocks:
        block.hash = None
    bm.cached.clear()
    return True


def add_cache_routes(app: FastAPI, aeng: EngineBridge, engine: object = None) -> None:
    """Add POST /reset_prefix_cache to `app`; the reset runs on the engine thread, between
    two steps, so it never races the scheduler (`engine` is not needed any more: the reset is
    a named command of the bridge, engine_commands.py)."""

    async def reset() -> JSONResponse:
        done = await aeng.command("reset_prefix_cache")  # engine_commands.py
        if not done:
            message = "requests are running; reset the prefix cache when the server is idle"
            return JSONResponse(error_body(409, message, "conflict"), status_code=409)
        return JSONResponse({"reset": True})

    app.post("/reset_prefix_cache")(reset)
