"""The OpenAI-compatible server: one `OpenAIServing` object answers every route; `create_app`
wires it into FastAPI with the guards (limits, API key, error bodies) of guards.py.

Endpoints: POST /v1/completions, POST /v1/chat/completions (serving.py: streaming with SSE, or
not), GET /v1/models, /health, /version, /metrics (Prometheus text, vLLM's metric names),
POST /reset_prefix_cache (cache_admin.py, between benchmark runs), POST /v1/load_lora_adapter
and /v1/unload_lora_adapter (lora_routes.py).
"""

from __future__ import annotations

import time

from fastapi import FastAPI
from fastapi.responses import Response

from week2_serving.engine.async_engine import AsyncEngine
from week2_serving.engine.bridge import EngineBridge
from week2_serving.engine.cache_admin import add_cache_routes
from week2_serving.engine.guards import ServingLimits, add_guards
from week2_serving.engine.llm_engine import LLMEngine
from week2_serving.engine.lora_routes import add_lora_routes, lora_cards
from week2_serving.engine.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from week2_serving.engine.serving import GenerationRoutes


def _package_version() -> str | None:
    """This project's installed version (the engine ships inside it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("inference-engineering")
    except PackageNotFoundError:
        return None


class OpenAIServing(GenerationRoutes):
    """The generation routes (serving.py) plus the small ones."""

    async def health(self) -> dict:
        self.check_engine()
        return {"status": "ok"}

    async def version(self) -> dict:  # what provenance records of the server, as vLLM's
        return {"engine": "ie-engine", "version": _package_version()}

    async def models(self) -> dict:
        card = {
            "id": self.served_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "week2-engine",
            "root": str(self.engine.config.model),
            "max_model_len": self.engine.max_model_len,
        }
        adapters = lora_cards(self.engine.lora, self.served_name, self.engine.max_model_len)
        return {"object": "list", "data": [card, *adapters]}

    async def metrics(self) -> Response:
        """vLLM-named Prometheus metrics. The engine thread records them (queue lengths and KV
        usage after every step), so rendering here reads no engine state and needs no lock."""
        self.check_engine()
        return Response(await self.aeng.metrics_text(), media_type=METRICS_CONTENT_TYPE)


def create_app(
    engine: LLMEngine,
    served_name: str,
    api_key: str | None = None,
    cpus: set[int] | None = None,
    limits: ServingLimits | None = None,
    bridge: EngineBridge | None = None,  # None: an AsyncEngine (the engine in a thread)
) -> FastAPI:
    """The FastAPI app serving `engine` as `served_name`; the engine thread runs while it does."""
    limits = limits or ServingLimits()
    aeng = bridge or AsyncEngine(engine, cpus, limits.max_num_waiting)
    serving = OpenAIServing(engine, aeng, served_name, limits)

    async def lifespan(app: FastAPI):
        aeng.start()
        yield
        aeng.shutdown()
        serving.close()

    app = FastAPI(title="week2 engine", lifespan=lifespan)
    app.state.engine = aeng
    app.state.serving = serving
    add_guards(app, api_key, limits)
    app.get("/health")(serving.health)
    app.get("/version")(serving.version)
    app.get("/v1/models")(serving.models)
    app.get("/metrics")(serving.metrics)
    app.post("/v1/completions")(serving.completions)
    app.post("/v1/chat/completions")(serving.chat)
    add_cache_routes(app, aeng, engine)
    add_lora_routes(app, aeng, engine, served_name)
    return app
