"""The OpenAI-compatible routes: one `OpenAIServing` object answers them; `create_app` wires it.

Endpoints: POST /v1/completions, POST /v1/chat/completions (streaming with SSE, or not),
GET /v1/models, /health, /version, /metrics (Prometheus text).

A request's life: its prompt is tokenized on a worker thread (the event loop keeps serving),
checked against the context length by token count, and its Sequence queued for the engine
thread (`AsyncEngine`), unless too many wait already (429). Its tokens come back one step at a
time until it finishes, its deadline passes (504) or its client goes away; in the last two
cases it is aborted at once and its KV blocks freed.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

from week2_serving.engine.async_engine import AsyncEngine, EngineFull
from week2_serving.engine.detokenizer import Detokenizer
from week2_serving.engine.guards import ServingLimits, add_guards
from week2_serving.engine.llm_engine import LLMEngine, StepOutput
from week2_serving.engine.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from week2_serving.engine.protocol import (
    APIError,
    ChatRequest,
    CommonRequest,
    CompletionRequest,
    error_body,
)
from week2_serving.engine.responses import token_event_writer, usage
from week2_serving.engine.sequence import SamplingParams


def _package_version() -> str | None:
    """This project's installed version (the engine ships inside it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("inference-engineering")
    except PackageNotFoundError:
        return None


def sse(data: dict) -> str:
    return f"data: {json.dumps(data)}\n\n"


async def wait_disconnect(request: Request) -> None:
    """Return when the client closes its connection (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class OpenAIServing:
    """The handlers of every route, sharing one engine (and its thread)."""

    def __init__(self, engine: LLMEngine, aeng: AsyncEngine, served_name: str, limits):
        self.engine, self.aeng, self.served_name = engine, aeng, served_name
        self.limits: ServingLimits = limits
        self.tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")

    def close(self) -> None:
        self.tokenizer_thread.shutdown(wait=False, cancel_futures=True)

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

    async def metrics(self) -> Response:
        """vLLM-named Prometheus metrics. The engine thread records them (queue lengths and KV
        usage after every step), so rendering here reads no engine state and needs no lock."""
        self.check_engine()
        return Response(self.engine.metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    # --- generation routes -----------------------------------------------------------------
    async def completions(self, body: CompletionRequest, request: Request):
        self.check_model(body)
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            if len(prompt) != 1:
                raise APIError(400, "send one prompt per request (a list of one string)", "prompt")
            prompt = prompt[0]
        params = self.sampling_params(body, body.max_tokens)
        ids = await self.tokenize(self.engine.encode, prompt) if isinstance(prompt, str) else prompt
        return await self.serve(request, ids, body, params, chat=False)

    async def chat(self, body: ChatRequest, request: Request):
        self.check_model(body)
        if not getattr(self.engine.tokenizer, "chat_template", None):
            raise APIError(400, "this model has no chat template; use /v1/completions")
        ids = await self.tokenize(self.chat_prompt_ids, [m.model_dump() for m in body.messages])
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:
            max_tokens = self.engine.max_model_len - len(ids)
        params = self.sampling_params(body, max_tokens)
        return await self.serve(request, ids, body, params, chat=True)

    # --- shared steps ----------------------------------------------------------------------
    def check_engine(self) -> None:
        if self.aeng.error is not None:
            message = f"engine failed: {self.aeng.error!r}; the server is stopping"
            raise APIError(503, message, "ServiceUnavailableError")

    def check_model(self, body: CommonRequest) -> None:
        if body.model != self.served_name:
            raise APIError(
                404, f"The model `{body.model}` does not exist.", "NotFoundError", "model"
            )

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        tok = self.engine.tokenizer
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.engine.encode(text)

    async def tokenize(self, fn, *args) -> list[int]:
        """`fn(*args)` on the tokenizer thread (the event loop goes on serving meanwhile)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.tokenizer_thread, fn, *args)
        except ValueError as e:
            raise APIError(400, str(e), param="prompt") from e

    def sampling_params(self, body: CommonRequest, max_tokens: int) -> SamplingParams:
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

    def as_api_error(self, exc: BaseException) -> APIError:
        """What a request's queue received instead of tokens, as the client will see it."""
        if isinstance(exc, EngineFull):
            wait = str(max(1, math.ceil(exc.retry_after)))  # Retry-After takes whole seconds
            return APIError(429, str(exc), "RateLimitError", headers={"Retry-After": wait})
        if exc is self.aeng.error:
            return APIError(500, f"engine failed: {exc!r}", "InternalServerError")
        return APIError(500, f"this request failed: {exc!r}", "InternalServerError")

    def deadline(self) -> float | None:
        timeout = self.limits.request_timeout
        return None if timeout is None else asyncio.get_running_loop().time() + timeout

    async def serve(
        self, request: Request, ids: list[int], body: CommonRequest, params, chat: bool
    ) -> Response | dict:
        deadline = self.deadline()
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        try:  # ids are tokens already: this checks the length and the vocabulary only
            seq = self.engine.make_sequence(ids, params, rid)
        except ValueError as e:
            raise APIError(400, str(e), param="prompt") from e
        self.check_engine()
        try:
            self.aeng.check_room()
        except EngineFull as e:
            raise self.as_api_error(e) from e
        q = self.aeng.submit(seq)
        head = {"id": rid, "created": int(time.time()), "model": self.served_name}
        if not body.stream:
            work = self.complete(q, head, chat, deadline)
            return await self.unless_disconnected(request, work, rid)
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        events = self.stream(q, head, chat, include_usage, deadline)
        return StreamingResponse(events, media_type="text/event-stream")

    async def unless_disconnected(self, request: Request, work: Awaitable[dict], rid: str) -> dict:
        """`work`'s answer, or, if the client leaves first, `work` cancelled and request `rid`
        aborted (its blocks freed at the engine's next step)."""
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(wait_disconnect(request))
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            task.cancel()  # no-op when done
        if not task.done() or task.cancelled():
            self.aeng.abort(rid)  # also when `work` was cancelled before it started
            raise APIError(499, "the client closed the connection", "ClientClosedRequest")
        return task.result()

    async def results(
        self, q: asyncio.Queue, rid: str, deadline: float | None
    ) -> AsyncIterator[StepOutput]:
        """The request's step outputs until it finishes; abort it if the consumer goes away,
        its deadline passes or anything else ends the iteration early."""
        finished = False
        try:
            while not finished:
                out = q.get_nowait() if not q.empty() else await self.next_output(q, deadline)
                if isinstance(out, BaseException):
                    raise self.as_api_error(out)
                finished = out.finished
                if out.error is not None:  # this request failed inside the engine; others go on
                    raise APIError(500, f"this request failed: {out.error}", "InternalServerError")
                yield out
        finally:
            if not finished:
                self.aeng.abort(rid)

    async def next_output(self, q: asyncio.Queue, deadline: float | None):
        if deadline is None:
            return await q.get()
        try:
            async with asyncio.timeout_at(deadline):
                return await q.get()
        except TimeoutError:
            message = (
                f"the request took longer than {self.limits.request_timeout} s "
                "(--request-timeout); it was aborted"
            )
            raise APIError(504, message, "TimeoutError") from None

    async def complete(self, q: asyncio.Queue, head: dict, chat: bool, deadline) -> dict:
        """The whole answer in one JSON body (decoded once, at the end)."""
        last, ids = None, []
        async with aclosing(self.results(q, head["id"], deadline)) as outs:
            async for out in outs:
                ids += out.new_token_ids
                last = out
        text = await self.tokenize(self.engine.tokenizer.decode, ids)
        if chat:
            c = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            c = {"index": 0, "text": text, "logprobs": None}
        c["finish_reason"] = last.finish_reason
        obj = "chat.completion" if chat else "text_completion"
        return {**head, "object": obj, "choices": [c], "usage": usage(last)}

    async def stream(
        self, q: asyncio.Queue, head: dict, chat: bool, include_usage: bool, deadline
    ) -> AsyncIterator[str]:
        """Server-sent events: one per token that adds text, then usage (if asked) and [DONE];
        a failure (engine, deadline, a fault in this stream) ends it with an error event."""
        obj = "chat.completion.chunk" if chat else "text_completion"
        token_event = token_event_writer(head, obj, chat)
        detok = Detokenizer(self.engine.tokenizer)
        if chat:
            first = {"index": 0, "delta": {"role": "assistant", "content": ""}}
            yield sse({**head, "object": obj, "choices": [first]})
        last = None
        try:
            async with aclosing(self.results(q, head["id"], deadline)) as outs:
                async for out in outs:
                    text = detok.add(out.new_token_ids)
                    last = out
                    finish = out.finish_reason if out.finished else None
                    if text or finish:
                        yield token_event(text, finish)
        except Exception as e:
            err = e if isinstance(e, APIError) else self.as_api_error(e)
            yield sse(error_body(err.status, err.message, err.type))
            return
        if include_usage:
            yield sse({**head, "object": obj, "choices": [], "usage": usage(last)})
        yield "data: [DONE]\n\n"


def create_app(
    engine: LLMEngine,
    served_name: str,
    api_key: str | None = None,
    cpus: set[int] | None = None,
    limits: ServingLimits | None = None,
) -> FastAPI:
    """The FastAPI app serving `engine` as `served_name`; the engine thread runs while it does."""
    limits = limits or ServingLimits()
    aeng = AsyncEngine(engine, cpus, limits.max_num_waiting)
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
    return app
