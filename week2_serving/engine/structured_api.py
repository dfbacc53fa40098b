"""The server side of structured output: request fields -> a compiled grammar -> one matcher per
sequence, or a 400 naming the field.

Two ways to ask, as vLLM 0.32 accepts them, on /v1/completions and /v1/chat/completions:

    "response_format": {"type": "json_object"}
    "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {...}}}
    "structured_outputs": {"json": {...}} | {"regex": "..."} | {"choice": ["a", "b"]}
                          | {"grammar": "root ::= ..."} | {"json_object": true}
    (+ "disable_any_whitespace": true in structured_outputs: compact JSON)

One constraint per request. Compiling (milliseconds to seconds for a large schema and vocabulary)
runs on the tokenizer thread, so the event loop keeps serving; grammars are cached by spec.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from week2_serving.engine.protocol import APIError, CommonRequest
from week2_serving.engine.sequence import SamplingParams, Sequence
from week2_serving.engine.structured import (
    Grammars,
    StructuredError,
    StructuredSpec,
    make_spec,
)


def requested_spec(body: CommonRequest) -> StructuredSpec | None:
    """The structured output a request asks for (None: plain text); a bad one -> APIError 400."""
    asked: list[tuple[str, object, str]] = []  # (kind, value, field)
    rf = body.response_format
    if rf is not None and rf.type == "json_object":
        asked.append(("json_object", True, "response_format"))
    elif rf is not None and rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema_ is None:
            message = 'response_format type "json_schema" needs json_schema.schema (the schema)'
            raise APIError(400, message, param="response_format")
        asked.append(("json_schema", rf.json_schema.schema_, "response_format.json_schema.schema"))
    so = body.structured_outputs
    if so is not None:
        for kind, value, name in (
            ("json_schema", so.json_, "json"),
            ("regex", so.regex, "regex"),
            ("choice", so.choice, "choice"),
            ("grammar", so.grammar, "grammar"),
            ("json_object", so.json_object or None, "json_object"),
        ):
            if value is not None:
                asked.append((kind, value, f"structured_outputs.{name}"))
    if len(asked) > 1:
        fields = ", ".join(a[2] for a in asked)
        raise APIError(
            400,
            f"send one structured output constraint, not {len(asked)} ({fields})",
            param=asked[1][2],
        )
    if not asked:
        if so is not None:
            message = "structured_outputs names no constraint: send json, regex, choice, grammar or json_object"
            raise APIError(400, message, param="structured_outputs")
        return None
    kind, value, param = asked[0]
    whitespace = not (so is not None and so.disable_any_whitespace)
    try:
        return make_spec(kind, value, param, whitespace)
    except StructuredError as e:
        raise APIError(400, str(e), param=e.param) from e


def check_params(params: SamplingParams) -> None:
    """Sampling settings a grammar cannot honour: the grammar ends on the EOS token."""
    if params.ignore_eos:
        raise APIError(
            400,
            "ignore_eos cannot be combined with structured output (the grammar "
            "ends with the EOS token)",
            param="ignore_eos",
        )
    if params.min_tokens:
        raise APIError(
            400,
            f"min_tokens={params.min_tokens} cannot be combined with structured "
            "output (the grammar decides the length); leave it out",
            param="min_tokens",
        )


class StructuredOutputs:
    """Attaches a grammar matcher to each sequence of a request that asks for structured output."""

    def __init__(self, engine, executor: Executor):
        self.engine, self.executor = engine, executor
        self.grammars: Grammars | None = None  # built on first use, on the executor's thread

    def _compile(self, spec: StructuredSpec):
        if self.grammars is None:
            e = self.engine
            self.grammars = Grammars(e.tokenizer, e.runner.cfg.vocab_size)
        return self.grammars.compile(spec)

    async def attach(self, body: CommonRequest, params: SamplingParams, seqs: list[Sequence]):
        """Give each sequence its own matcher; a spec that fails to compile -> 400, never 500."""
        spec = requested_spec(body)
        if spec is None:
            return
        check_params(params)
        try:
            loop = asyncio.get_running_loop()
            compiled = await loop.run_in_executor(self.executor, self._compile, spec)
        except StructuredError as e:
            raise APIError(400, str(e), param=e.param) from e
        for seq in seqs:
            seq.grammar = self.grammars.matcher(compiled)
            seq.grammar.spec = spec  # what an engine core process compiles again (core_client)
