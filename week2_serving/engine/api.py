"""The OpenAI-compatible routes: one `OpenAIServing` object answers them; `create_app` wires it.

Endpoints: POST /v1/completions, POST /v1/chat/completions (streaming with SSE, or not),
GET /v1/models, /health, /version, /metrics (Prometheus text).

A request is validated on the event loop (a bad one gets its 4xx at once), its Sequence goes to
the engine thread (`AsyncEngine`), and its tokens come back one step at a time. A client that
disconnects mid-stream has its request aborted (blocks freed) by the stream's `finally`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from week2_serving.engine.async_engine import AsyncEngine
from week2_serving.engine.llm_engine import LLMEngine, StepOutput
from week2_serving.engine.protocol import (
    APIError,
    ChatRequest,
    CommonRequest,
    CompletionRequest,
    error_body,
    validation_message,
)
from week2_serving.engine.responses import (
    Choice,
    Entry,
    Run,
    choice_body,
    chunk_choice,
    token_event_writer,
    usage,
)
from week2_serving.engine.sequence import SamplingParams, Sequence

MAX_SEQUENCES = 128  # engine sequences one request may start (prompts x n)
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
        if body.echo and body.logprobs is not None:
            raise APIError(
                400,
                "echo with logprobs needs the prompt's logprobs, which this server does not "
                "compute: send echo or logprobs, not both",
                param="echo",
            )
        if body.best_of is not None and body.best_of != (body.n or 1):
            raise APIError(
                400, f"best_of={body.best_of} is implemented only as best_of == n", param="best_of"
            )
        params = body.sampling_params(body.max_tokens or 16, body.logprobs)
        return await self.serve(body.prompts(), body, params, chat=False)

    async def chat(self, body: ChatRequest):
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        tok = self.engine.tokenizer
        if not getattr(tok, "chat_template", None):
            raise APIError(400, "this model has no chat template; use /v1/completions")
        msgs = body.chat_messages()
        prompt = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:  # the rest of the context (at least 1: too long is then a 400)
            max_tokens = max(1, self.engine.max_model_len - len(tok.encode(prompt)))
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        params = body.sampling_params(max_tokens, logprobs)
        return await self.serve([prompt], body, params, chat=True)

    # --- shared steps ----------------------------------------------------------------------
    def check_engine(self) -> None:
        if self.aeng.error is not None:
            raise APIError(500, f"engine failed: {self.aeng.error!r}", "InternalServerError")

    def check_model(self, name: str) -> None:
        if name != self.served_name:
            raise APIError(404, f"The model `{name}` does not exist.", "NotFoundError", "model")

    def new_sequence(self, prompt: str | list[int], params: SamplingParams, rid: str) -> Sequence:
        limit = self.engine.max_model_len
        if isinstance(prompt, list) and len(prompt) >= limit:  # before scanning the ids
            raise APIError(
                400,
                f"the prompt has {len(prompt)} tokens; this model's context is {limit}",
                param="prompt",
            )
        try:
            return self.engine.make_sequence(prompt, params, rid)
        except ValueError as e:  # too long with max_tokens, outside the vocabulary, empty
            param = "max_tokens" if "maximum context length" in str(e) else "prompt"
            raise APIError(400, str(e), param=param) from e

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

    def make_choices(
        self, prompts: list[str | list[int]], body: CommonRequest, params: SamplingParams, rid: str
    ) -> list[tuple[Choice, Sequence]]:
        """One sequence per (prompt, choice), all validated before any reaches the engine."""
        each = params.choices()
        if len(prompts) * len(each) > MAX_SEQUENCES:
            raise APIError(
                400,
                f"{len(prompts)} prompts x n={len(each)} is {len(prompts) * len(each)} "
                f"sequences; this server takes at most {MAX_SEQUENCES} per request",
                param="n",
            )
        echo = isinstance(body, CompletionRequest) and bool(body.echo)
        out = []
        for i, (prompt, p) in enumerate(itertools.product(prompts, each)):
            cid = rid if len(prompts) * len(each) == 1 else f"{rid}-{i}"
            seq = self.new_sequence(prompt, p, cid)
            text = "" if not echo else prompt if isinstance(prompt, str) else self.decode(prompt)
            out.append((Choice(i, cid, self.engine.tokenizer, body.stop_strings(), text), seq))
        return out

    def decode(self, ids: list[int]) -> str:
        return self.engine.tokenizer.decode(ids, skip_special_tokens=True)

    async def serve(
        self,
        prompts: list[str | list[int]],
        body: CommonRequest,
        params: SamplingParams,
        chat: bool,
    ) -> StreamingResponse | dict:
        self.check_model(body.model)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        pairs = self.make_choices(prompts, body, params, rid)
        self.check_engine()
        queues = [self.aeng.submit(seq) for _, seq in pairs]
        choices = [c for c, _ in pairs]
        head = {"id": rid, "created": int(time.time()), "model": self.served_name}
        run = Run(choices, queues, params.n, params.logprobs is not None, chat)
        if not body.stream:
            return await self.complete(run, head)
        events = self.stream(run, head, body.include_usage())
        return StreamingResponse(events, media_type="text/event-stream")

    async def outputs(self, run: Run) -> AsyncIterator[tuple[Choice, StepOutput]]:
        """Every choice's step outputs as they come, until each choice is done. A choice that
        a stop string ended is aborted in the engine at once (its blocks freed)."""
        if len(run.choices) == 1:  # the common case, without a task per choice
            c = run.choices[0]
            async with aclosing(self.results(run.queues[0], c.request_id)) as outs:
                async for out in outs:
                    yield c, out
                    if c.done:
                        return
            return
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(c: Choice, q: asyncio.Queue) -> None:
            try:
                async for out in self.results(q, c.request_id):
                    merged.put_nowait((c, out))
            except APIError as e:
                merged.put_nowait((c, e))

        tasks = [asyncio.create_task(pump(c, q)) for c, q in zip(run.choices, run.queues)]
        try:
            while not all(c.done for c in run.choices):
                c, out = await merged.get()
                if isinstance(out, APIError):
                    raise out
                yield c, out
                if c.stopped_early:
                    self.aeng.abort(c.request_id)
        finally:
            for t in tasks:
                t.cancel()

    async def complete(self, run: Run, head: dict) -> dict:
        """The whole answer in one JSON body."""
        texts = {c.index: [c.echo] for c in run.choices}
        entries: dict[int, list[Entry]] = {c.index: [] for c in run.choices}
        async for c, out in self.outputs(run):
            delta = c.add(out)
            texts[c.index].append(delta.text)
            entries[c.index] += delta.entries
        bodies = [
            choice_body(
                c, "".join(texts[c.index]), entries[c.index] if run.logprobs else None, run.chat
            )
            for c in run.choices
        ]
        obj = "chat.completion" if run.chat else "text_completion"
        return {**head, "object": obj, "choices": bodies, "usage": usage(run.choices, run.n)}

    async def stream(self, run: Run, head: dict, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: per choice its start (chat role, or echoed prompt), one event per
        step that adds text (or logprobs, or the finish), then usage (if asked) and [DONE]."""
        obj = "chat.completion.chunk" if run.chat else "text_completion"
        token_event = token_event_writer(head, obj, run.chat)
        for c in run.choices:
            if run.chat:
                first = {"index": c.index, "delta": {"role": "assistant", "content": ""}}
                yield sse({**head, "object": obj, "choices": [first]})
            elif c.echo:
                yield token_event(c.index, c.echo, None)
        try:
            async for c, out in self.outputs(run):
                delta = c.add(out)
                if run.logprobs and (delta.text or delta.entries or delta.finish_reason):
                    chunk = chunk_choice(c.index, delta, run.chat, logprobs=True)
                    yield sse({**head, "object": obj, "choices": [chunk]})
                elif delta.text or delta.finish_reason:
                    yield token_event(c.index, delta.text, delta.finish_reason)
        except APIError as e:  # the engine died mid-stream: say so in the stream
            yield sse(error_body(e.status, e.message, e.type))
            return
        if include_usage:
            yield sse({**head, "object": obj, "choices": [], "usage": usage(run.choices, run.n)})
        yield "data: [DONE]\n\n"


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
    """pydantic's complaints as one OpenAI error (400) naming the field and the value."""
    message, param = validation_message(exc.errors())
    return JSONResponse(error_body(400, message, "BadRequestError", param), status_code=400)


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
