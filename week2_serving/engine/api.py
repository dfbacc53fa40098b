"""The OpenAI-compatible routes: one `OpenAIServing` object answers them; `create_app` wires it.

Endpoints: POST /v1/completions, POST /v1/chat/completions (streaming with SSE, or not),
GET /v1/models, /health, /version, /metrics (Prometheus text).

A request is validated on the event loop (a bad one gets its 4xx at once), its Sequence goes to
the engine thread (`AsyncEngine`), and its tokens come back one step at a time. A client that
disconnects mid-stream has its request aborted (blocks freed) by the stream's `finally`.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from week2_serving.engine.async_engine import AsyncEngine
from week2_serving.engine.detokenizer import Detokenizer
from week2_serving.engine.llm_engine import LLMEngine, StepOutput
from week2_serving.engine.protocol import (
    APIError,
    ChatRequest,
    CommonRequest,
    CompletionRequest,
    error_body,
)
from week2_serving.engine.sequence import SamplingParams, Sequence

COUNTERS = {  # the /metrics keys that only grow; the others are gauges
    "prefix_cache_queries_tokens",
    "prefix_cache_hits_tokens",
    "prompt_tokens",
    "generation_tokens",
    "requests_finished",
    "requests_aborted",
    "preemptions",
    "steps",
}


def _package_version() -> str | None:
    """This project's installed version (the engine ships inside it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("inference-engineering")
    except PackageNotFoundError:
        return None


def usage(out: StepOutput) -> dict:
    return {
        "prompt_tokens": out.num_prompt_tokens,
        "completion_tokens": out.num_output_tokens,
        "total_tokens": out.num_prompt_tokens + out.num_output_tokens,
    }


def sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


class OpenAIServing:
    """The handlers of every route, sharing one engine (and its thread)."""

    def __init__(self, engine: LLMEngine, aeng: AsyncEngine, served_name: str):
        self.engine, self.aeng, self.served_name = engine, aeng, served_name

    # --- small routes ----------------------------------------------------------------------
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
        return {"object": "list", "data": [card]}

    async def metrics(self) -> PlainTextResponse:
        lines = []
        for key, value in self.engine.stats().items():
            if key == "time":
                continue
            kind = "counter" if key in COUNTERS else "gauge"
            lines += [f"# TYPE engine_{key} {kind}", f"engine_{key} {value}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    # --- generation routes -----------------------------------------------------------------
    async def completions(self, body: CompletionRequest):
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "send one prompt per request (a list of one string)", "prompt")
            prompt = prompt[0]
        return await self.serve(prompt, body, body.max_tokens, chat=False)

    async def chat(self, body: ChatRequest):
        tok = self.engine.tokenizer
        msgs = [m.model_dump() for m in body.messages]
        if not getattr(tok, "chat_template", None):
            raise APIError(400, "this model has no chat template; use /v1/completions")
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:
            max_tokens = self.engine.max_model_len - len(tok.encode(prompt))
        return await self.serve(prompt, body, max_tokens, chat=True)

    # --- shared steps ----------------------------------------------------------------------
    def check_engine(self) -> None:
        if self.aeng.error is not None:
            raise APIError(500, f"engine failed: {self.aeng.error!r}", "InternalServerError")

    def sampling_params(self, body: CommonRequest, max_tokens: int) -> SamplingParams:
        if body.model != self.served_name:
            raise APIError(
                404, f"The model `{body.model}` does not exist.", "NotFoundError", "model"
            )
        if body.n != 1:
            raise APIError(400, f"n={body.n}: this engine returns one choice (n=1)", param="n")
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=float(body.temperature),
                top_k=max(body.top_k, 0),
                top_p=float(body.top_p),
                seed=body.seed,
                ignore_eos=body.ignore_eos,
                stop_token_ids=list(body.stop_token_ids or []),
            )
        except ValueError as e:
            raise APIError(400, str(e)) from e

    def new_sequence(self, prompt: str | list[int], params: SamplingParams, rid: str) -> Sequence:
        try:
            return self.engine.make_sequence(prompt, params, rid)
        except ValueError as e:
            raise APIError(400, str(e), param="prompt") from e

    async def results(self, q: asyncio.Queue, rid: str) -> AsyncIterator[StepOutput]:
        """The request's step outputs until it finishes; abort it if the consumer goes away."""
        finished = False
        try:
            while not finished:
                out = await q.get()
                if isinstance(out, BaseException):
                    raise APIError(500, f"engine failed: {out!r}", "InternalServerError")
                finished = out.finished
                yield out
        finally:
            if not finished:
                self.aeng.abort(rid)

    async def serve(
        self, prompt: str | list[int], body: CommonRequest, max_tokens: int, chat: bool
    ) -> StreamingResponse | dict:
        params = self.sampling_params(body, max_tokens)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        seq = self.new_sequence(prompt, params, rid)
        self.check_engine()
        q = self.aeng.submit(seq)
        head = {"id": rid, "created": int(time.time()), "model": self.served_name}
        if not body.stream:
            return await self.complete(q, head, chat)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        events = self.stream(q, head, chat, include_usage)
        return StreamingResponse(events, media_type="text/event-stream")

    async def complete(self, q: asyncio.Queue, head: dict, chat: bool) -> dict:
        """The whole answer in one JSON body (decoded once, at the end)."""
        last, ids = None, []
        async for out in self.results(q, head["id"]):
            ids += out.new_token_ids
            last = out
        text = self.engine.tokenizer.decode(ids)
        if chat:
            c = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            c = {"index": 0, "text": text, "logprobs": None}
        c["finish_reason"] = last.finish_reason
        obj = "chat.completion" if chat else "text_completion"
        return {**head, "object": obj, "choices": [c], "usage": usage(last)}

    async def stream(
        self, q: asyncio.Queue, head: dict, chat: bool, include_usage: bool
    ) -> AsyncIterator[str]:
        """Server-sent events: one per token that adds text, then usage (if asked) and [DONE]."""
        obj = "chat.completion.chunk" if chat else "text_completion"
        token_event = token_event_writer(head, obj, chat)
        detok = Detokenizer(self.engine.tokenizer)
        if chat:
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}}
            yield sse({**head, "object": obj, "choices": [first]})
        last = None
        try:
            async for out in self.results(q, head["id"]):
                text = detok.add(out.new_token_ids)
                last = out
                finish = out.finish_reason if out.finished else None
                if text or finish:
                    yield token_event(text, finish)
        except APIError as e:  # the engine died mid-stream: say so in the stream
            yield sse(error_body(e.status, e.message, e.type))
            return
        if include_usage:
            yield sse({**head, "object": obj, "choices": [], "usage": usage(last)})
        yield "data: [DONE]\n\n"


def token_event_writer(head: dict, obj: str, chat: bool):
    """The per-token SSE event, the hot path (one per token per stream): its constant part is
    serialized once, only the new text and the finish reason are encoded per token."""
    prefix = "data: " + json.dumps({**head, "object": obj})[:-1] + ', "choices": [{"index": 0, '
    text_key = '"delta": {"content": ' if chat else '"text": '
    text_end = "}" if chat else ', "logprobs": null'

    def token_event(text: str, finish: str | None) -> str:
        return f'{prefix}{text_key}{json.dumps(text)}{text_end}, "finish_reason": {json.dumps(finish)}}}]}}\n\n'

    return token_event


class APIKeyMiddleware:
    """401 for /v1/* requests without `Authorization: Bearer <key>`; /health and /metrics open."""

    def __init__(self, app, api_key: str):
        self.app, self.wanted = app, f"Bearer {api_key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1"):
            auth = dict(scope["headers"]).get(b"authorization")
            if auth != self.wanted:
                body = error_body(401, "missing or wrong API key", "AuthenticationError")
                await JSONResponse(body, status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    """pydantic's complaints as one OpenAI error message (400)."""
    problems = []
    for err in exc.errors():
        if err.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({err.get('msg')})")
            continue
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {err.get('msg')}")
    return JSONResponse(error_body(400, "; ".join(problems), "BadRequestError"), status_code=400)


async def on_api_error(_: Request, exc: APIError) -> JSONResponse:
    body = error_body(exc.status, exc.message, exc.type, exc.param)
    return JSONResponse(body, status_code=exc.status)


def create_app(
    engine: LLMEngine, served_name: str, api_key: str | None = None, cpus: set[int] | None = None
) -> FastAPI:
    """The FastAPI app serving `engine` as `served_name`; the engine thread runs while it does."""
    aeng = AsyncEngine(engine, cpus)
    serving = OpenAIServing(engine, aeng, served_name)

    async def lifespan(app: FastAPI):
        aeng.start()
        yield
        aeng.shutdown()

    app = FastAPI(title="week2 engine", lifespan=lifespan)
    app.state.engine = aeng
    app.state.serving = serving
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(APIError, on_api_error)
    if api_key:  # a plain ASGI wrapper: Starlette's BaseHTTPMiddleware slows every stream
        app.add_middleware(APIKeyMiddleware, api_key=api_key)
    app.get("/health")(serving.health)
    app.get("/version")(serving.version)
    app.get("/v1/models")(serving.models)
    app.get("/metrics")(serving.metrics)
    app.post("/v1/completions")(serving.completions)
    app.post("/v1/chat/completions")(serving.chat)
    return app
