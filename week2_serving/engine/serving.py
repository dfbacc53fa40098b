"""The generation routes: a request becomes engine sequences, their outputs an OpenAI answer.

A request's life: its prompts are tokenized on a worker thread (the event loop keeps serving),
checked against the context by token count, and one Sequence per (prompt, choice) is queued
for the engine thread (`AsyncEngine`), unless too many wait already (429). Tokens come back one
step at a time until each choice finishes, the request's deadline passes (504) or its client
goes away; in the last two cases every sequence is aborted at once and its KV blocks freed.
Streamed or not, the same `Choice` code (responses.py) turns outputs into text and logprobs.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from week2_serving.engine.async_engine import AsyncEngine, EngineFull
from week2_serving.engine.guards import ServingLimits, wait_disconnect
from week2_serving.engine.llm_engine import LLMEngine, StepOutput
from week2_serving.engine.protocol import (
    APIError,
    ChatRequest,
    CommonRequest,
    CompletionRequest,
    error_body,
)
from week2_serving.engine.responses import (
    Choice,
    Entry,
    Run,
    choice_body,
    chunk_choice,
    sse,
    token_event_writer,
    usage,
)
from week2_serving.engine.sequence import SamplingParams, Sequence
from week2_serving.engine.structured_api import StructuredOutputs

MAX_SEQUENCES = 128  # engine sequences one request may start (prompts x n)


class GenerationRoutes:
    """/v1/completions and /v1/chat/completions over one engine (and its thread)."""

    def __init__(self, engine: LLMEngine, aeng: AsyncEngine, served_name: str, limits):
        self.engine, self.aeng, self.served_name = engine, aeng, served_name
        self.limits: ServingLimits = limits
        self.tokenizer_thread = ThreadPoolExecutor(1, thread_name_prefix="tokenizer")
        self.structured = StructuredOutputs(engine, self.tokenizer_thread)  # grammars compile there

    def close(self) -> None:
        self.tokenizer_thread.shutdown(wait=False, cancel_futures=True)

    # --- the routes ------------------------------------------------------------------------
    async def completions(self, body: CompletionRequest, request: Request):
        self.check_model(body.model)
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
        params = body.sampling_params(
            body.max_tokens or 16, body.logprobs, self.engine.sampling_defaults
        )
        texts = body.prompts()
        ids = [
            await self.tokenize(self.engine.encode, p) if isinstance(p, str) else p for p in texts
        ]
        echoes = [p if isinstance(p, str) else None for p in texts] if body.echo else None
        return await self.serve(request, ids, echoes, body, params, chat=False)

    async def chat(self, body: ChatRequest, request: Request):
        self.check_model(body.model)
        if body.top_logprobs is not None and not body.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if not getattr(self.engine.tokenizer, "chat_template", None):
            raise APIError(400, "this model has no chat template; use /v1/completions")
        ids = await self.tokenize(self.chat_prompt_ids, body.chat_messages())
        max_tokens = body.max_completion_tokens or body.max_tokens
        if max_tokens is None:  # the rest of the context (at least 1: too long is then a 400)
            max_tokens = max(1, self.engine.max_model_len - len(ids))
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        params = body.sampling_params(max_tokens, logprobs, self.engine.sampling_defaults)
        return await self.serve(request, [ids], None, body, params, chat=True)

    # --- admission -------------------------------------------------------------------------
    def check_engine(self) -> None:
        if self.aeng.error is not None:
            message = f"engine failed: {self.aeng.error!r}; the server is stopping"
            raise APIError(503, message, "ServiceUnavailableError")

    def check_model(self, name: str) -> str | None:
        """The LoRA adapter `name` picks (None: the base model), or 404 as vLLM answers."""
        lora = self.engine.lora
        if name != self.served_name and (lora is None or name not in lora.registry):
            raise APIError(404, f"The model `{name}` does not exist.", "NotFoundError", "model")
        return None if name == self.served_name else name

    def chat_prompt_ids(self, messages: list[dict]) -> list[int]:
        tok = self.engine.tokenizer
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.engine.encode(text)

    async def tokenize(self, fn, *args):
        """`fn(*args)` on the tokenizer thread (the event loop goes on serving meanwhile)."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self.tokenizer_thread, fn, *args)
        except ValueError as e:
            raise APIError(400, str(e), param="prompt") from e

    def new_sequence(
        self, ids: list[int], params: SamplingParams, rid: str, salt: str | None, lora: str | None
    ) -> Sequence:
        limit = self.engine.max_model_len
        if len(ids) >= limit:  # before scanning the ids
            message = f"the prompt has {len(ids)} tokens; this model's context is {limit}"
            raise APIError(400, message, param="prompt")
        try:  # tokens already: this checks the length with max_tokens and the vocabulary
            return self.engine.make_sequence(ids, params, rid, cache_salt=salt, lora_name=lora)
        except ValueError as e:  # too long with max_tokens, outside the vocabulary, empty
            param = "max_tokens" if "maximum context length" in str(e) else "prompt"
            raise APIError(400, str(e), param=param) from e

    def make_choices(
        self,
        prompts: list[list[int]],
        echoes: list[str | None] | None,
        body: CommonRequest,
        params: SamplingParams,
        rid: str,
    ) -> list[tuple[Choice, Sequence]]:
        """One sequence per (prompt, choice), all validated before any reaches the engine."""
        each = params.choices()
        total = len(prompts) * len(each)
        if total > MAX_SEQUENCES:
            raise APIError(
                400,
                f"{len(prompts)} prompts x n={len(each)} is {total} sequences; this server "
                f"takes at most {MAX_SEQUENCES} per request",
                param="n",
            )
        out = []
        pairs = itertools.product(enumerate(prompts), each)
        for i, ((j, ids), p) in enumerate(pairs):
            cid = rid if total == 1 else f"{rid}-{i}"
            seq = self.new_sequence(ids, p, cid, body.cache_salt, self.check_model(body.model))
            echo = "" if echoes is None else echoes[j] or self.decode(ids)
            out.append((Choice(i, cid, self.engine.tokenizer, body.stop_strings(), echo), seq))
        return out

    def decode(self, ids: list[int]) -> str:
        return self.engine.tokenizer.decode(ids, skip_special_tokens=True)

    def as_api_error(self, exc: BaseException) -> APIError:
        """What a request's queue received instead of tokens, as the client will see it."""
        if isinstance(exc, APIError):
            return exc
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
        self,
        request: Request,
        prompts: list[list[int]],
        echoes: list[str | None] | None,
        body: CommonRequest,
        params: SamplingParams,
        chat: bool,
    ) -> Response | dict:
        deadline = self.deadline()
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        pairs = self.make_choices(prompts, echoes, body, params, rid)
        await self.structured.attach(body, params, [seq for _, seq in pairs])  # 400 if bad
        self.check_engine()
        try:
            self.aeng.check_room()
        except EngineFull as e:
            raise self.as_api_error(e) from e
        queues = [self.aeng.submit(seq) for _, seq in pairs]
        choices = [c for c, _ in pairs]
        head = {"id": rid, "created": int(time.time()), "model": body.model}  # base or adapter
        run = Run(choices, queues, params.n, params.logprobs is not None, chat, deadline)
        if not body.stream:
            rids = [c.request_id for c in choices]
            return await self.unless_disconnected(request, self.complete(run, head), rids)
        events = self.stream(run, head, body.include_usage())
        return StreamingResponse(events, media_type="text/event-stream")

    async def unless_disconnected(self, request: Request, work: Awaitable[dict], rids) -> dict:
        """`work`'s answer, or, if the client leaves first, `work` cancelled and its requests
        aborted (their blocks freed at the engine's next step)."""
        task = asyncio.ensure_future(work)
        watch = asyncio.ensure_future(wait_disconnect(request))
        try:
            await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watch.cancel()
            task.cancel()  # no-op when done
        if not task.done() or task.cancelled():
            for rid in rids:  # also when `work` was cancelled before it started
                self.aeng.abort(rid)
            raise APIError(499, "the client closed the connection", "ClientClosedRequest")
        return task.result()

    # --- outputs ---------------------------------------------------------------------------
    async def results(
        self, q: asyncio.Queue, rid: str, deadline: float | None
    ) -> AsyncIterator[StepOutput]:
        """One sequence's step outputs until it finishes; abort it if the consumer goes away,
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

    async def outputs(self, run: Run) -> AsyncIterator[tuple[Choice, StepOutput]]:
        """Every choice's step outputs as they come, until each choice is done. A choice that
        a stop string ended is aborted in the engine at once (its blocks freed)."""
        if len(run.choices) == 1:  # the common case, without a task per choice
            c = run.choices[0]
            async with aclosing(self.results(run.queues[0], c.request_id, run.deadline)) as outs:
                async for out in outs:
                    yield c, out
                    if c.done:
                        return
            return
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(c: Choice, q: asyncio.Queue) -> None:
            try:
                async with aclosing(self.results(q, c.request_id, run.deadline)) as outs:
                    async for out in outs:
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
            for c in run.choices:  # ended early (error, disconnect): none keeps running
                if not c.done:
                    self.aeng.abort(c.request_id)

    async def complete(self, run: Run, head: dict) -> dict:
        """The whole answer in one JSON body."""
        texts = {c.index: [c.echo] for c in run.choices}
        entries: dict[int, list[Entry]] = {c.index: [] for c in run.choices}
        async with aclosing(self.outputs(run)) as outs:
            async for c, out in outs:
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
        step that adds text (or logprobs, or the finish), then usage (if asked) and [DONE]; a
        failure (engine, deadline, a fault in this request) ends it with an error event."""
        obj = "chat.completion.chunk" if run.chat else "text_completion"
        token_event = token_event_writer(head, obj, run.chat)
        for c in run.choices:
            if run.chat:
                first = {"index": c.index, "delta": {"role": "assistant", "content": ""}}
                yield sse({**head, "object": obj, "choices": [first]})
            elif c.echo:
                yield token_event(c.index, c.echo, None)
        try:
            async with aclosing(self.outputs(run)) as outs:
                async for c, out in outs:
                    delta = c.add(out)
                    if run.logprobs and (delta.text or delta.entries or delta.finish_reason):
                        chunk = chunk_choice(c.index, delta, run.chat, logprobs=True)
                        yield sse({**head, "object": obj, "choices": [chunk]})
                    elif delta.text or delta.finish_reason:
                        yield token_event(c.index, delta.text, delta.finish_reason)
        except Exception as e:
            err = self.as_api_error(e)
            yield sse(error_body(err.status, err.message, err.type))
            return
        if include_usage:
            yield sse({**head, "object": obj, "choices": [], "usage": usage(run.choices, run.n)})
        yield "data: [DONE]\n\n"
