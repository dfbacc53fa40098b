"""What the HTTP API accepts and how it says no: request bodies and OpenAI-style errors.

Every field has a type and a range, checked before anything runs: strict types ("5" is not
an integer, true is not a number), finite numbers only (Python's JSON reader accepts NaN and
Infinity; we refuse them), integers within 64 bits, bounded lists. A field this server does
not implement is refused by name (never silently ignored), except when its value changes
nothing (`presence_penalty: 0`, `logit_bias: {}`, `user: "..."`), so standard clients work.
week2_serving/README.md has the table of fields.

An `APIError` raised anywhere in a handler becomes the JSON body OpenAI's clients parse:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    field_validator,
)

from week1_gpt_kvcache.sampling import MAX_N, SamplingParams

MAX_STOP, MAX_STOP_CHARS = 4, 256  # stop strings per request (OpenAI's 4), characters each
MAX_PROMPTS = 64  # prompts in one completions request (each gets n choices)
MAX_COMPLETION_LOGPROBS, MAX_CHAT_LOGPROBS = 5, 20  # OpenAI's limits

Number = Annotated[float, Strict(), AllowInfNan(False)]  # an int or a finite float
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
TokenId = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]
ShortStr = Annotated[StrictStr, Field(max_length=256)]
StopStr = Annotated[StrictStr, Field(min_length=1, max_length=MAX_STOP_CHARS)]

# fields accepted only with a value that changes nothing (None always means "not sent")
NO_OP: dict[str, tuple[Any, ...]] = {
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "repetition_penalty": (1,),
    "min_p": (0,),
    "logit_bias": ({},),
    "suffix": ("",),
    "tools": ([],),
    "tool_choice": ("none",),
    "modalities": (["text"],),
    "store": (False,),
}


class ClosedModel(BaseModel):
    """A request object: an unknown field is an error naming it."""

    model_config = ConfigDict(extra="forbid")


class StreamOptions(ClosedModel):
    include_usage: StrictBool = False
    continuous_usage_stats: Literal[False] | None = None


class JsonSchemaFormat(ClosedModel):
    """OpenAI's `response_format.json_schema`: the schema under "schema" (an alias: pydantic)."""

    name: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    description: Annotated[StrictStr, Field(max_length=4096)] | None = None
    schema_: dict[ShortStr, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(ClosedModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputs(ClosedModel):
    """vLLM's `structured_outputs` extension: one constraint (structured.py checks the rest)."""

    json_: dict[ShortStr, Any] | StrictStr | None = Field(default=None, alias="json")
    regex: StrictStr | None = None
    choice: list[StrictStr] | None = None
    grammar: StrictStr | None = None
    json_object: StrictBool | None = None
    disable_any_whitespace: StrictBool = False
    disable_additional_properties: Literal[False] = False  # accepted only as the default


class CommonRequest(ClosedModel):
    """The fields /v1/completions and /v1/chat/completions share."""

    model: ShortStr
    temperature: Annotated[Number, Field(ge=0, le=2)] | None = None  # None: 1.0 (OpenAI)
    top_p: Annotated[Number, Field(gt=0, le=1)] | None = None  # None: 1.0
    top_k: Annotated[StrictInt, Field(ge=-1, le=2**63 - 1)] | None = None  # -1 or 0: off (vLLM)
    seed: Annotated[StrictInt, Field(ge=-(2**63), lt=2**64)] | None = None  # 64 bits
    n: Annotated[StrictInt, Field(ge=1, le=MAX_N)] | None = None
    stop: StopStr | Annotated[list[StopStr], Field(max_length=MAX_STOP)] | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: StrictBool = False  # vLLM's extension, as the benchmarks send it
    min_tokens: Annotated[StrictInt, Field(ge=0, le=2**63 - 1)] = 0
    stop_token_ids: Annotated[list[TokenId], Field(max_length=64)] | None = None
    user: ShortStr | None = None  # metadata only
    # prefix-cache isolation (vLLM's field): requests share cached KV only with the same salt
    cache_salt: Annotated[ShortStr, Field(min_length=1)] | None = None
    # structured output (structured.py): OpenAI's response_format, vLLM's structured_outputs
    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    # accepted only as no-ops (NO_OP)
    frequency_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[Number, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[Number, Field(gt=0, le=2)] | None = None
    min_p: Annotated[Number, Field(ge=0, le=1)] | None = None
    logit_bias: dict[ShortStr, Annotated[Number, Field(ge=-100, le=100)]] | None = None

    @field_validator(
        "frequency_penalty", "presence_penalty", "repetition_penalty", "min_p", "logit_bias"
    )
    @classmethod
    def _vllm_no_op(cls, value: Any, info: ValidationInfo) -> Any:
        return only_no_op(value, info)

    def stop_strings(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def sampling_params(
        self, max_tokens: int, logprobs: int | None, defaults: dict | None = None
    ) -> SamplingParams:
        """This request's SamplingParams (n choices); a value they refuse becomes a 400.
        `defaults` (the model's generation_config.json) fill temperature/top_p/top_k unset."""
        d = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, **(defaults or {})}
        try:
            return SamplingParams(
                max_tokens=max_tokens,
                temperature=float(
                    d["temperature"] if self.temperature is None else self.temperature
                ),
                top_k=max(d["top_k"] if self.top_k is None else self.top_k, 0),
                top_p=float(d["top_p"] if self.top_p is None else self.top_p),
                seed=self.seed,
                stop_token_ids=tuple(self.stop_token_ids or ()),
                ignore_eos=self.ignore_eos,
                min_tokens=self.min_tokens,
                logprobs=logprobs,
                n=self.n or 1,
            )
        except ValueError as e:
            raise APIError(400, str(e), param=str(e).split("=")[0]) from e


def only_no_op(value: Any, info: ValidationInfo) -> Any:
    """A field this server does not implement passes only with the value that changes nothing."""
    allowed = NO_OP[info.field_name]
    if value is not None and value not in allowed:
        raise ValueError(
            f"{info.field_name}={value!r} is not implemented by this server; "
            f"send {allowed[0]!r} or leave it out"
        )
    return value


def check_prompt(value: Any) -> str | list[int] | list[str] | list[list[int]]:
    """The completions prompt, checked by hand: one clear message instead of four (one per
    shape the value is not)."""
    if isinstance(value, str) or (isinstance(value, list) and value and all(map(_token, value))):
        return value
    if not isinstance(value, list) or not value:
        raise ValueError(
            f"prompt must be a string, a list of token ids, or a list of 1 to {MAX_PROMPTS} "
            f"strings or token lists (got {short_repr(value)})"
        )
    if len(value) > MAX_PROMPTS:
        raise ValueError(f"prompt holds {len(value)} prompts; send at most {MAX_PROMPTS}")
    if all(isinstance(p, str) for p in value):
        return value
    for i, p in enumerate(value):
        if not (isinstance(p, list) and p and all(map(_token, p))):
            raise ValueError(
                f"prompt[{i}]={short_repr(p)}: each prompt of a list must be a string or a "
                f"non-empty list of token ids in [0, 2**63), all of one kind"
            )
    return value


def _token(t: Any) -> bool:
    return isinstance(t, int) and not isinstance(t, bool) and 0 <= t < 2**63


def short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class CompletionRequest(CommonRequest):
    # a string, a list of token ids, or a list of 1..MAX_PROMPTS of either
    prompt: Annotated[str | list[int] | list[str] | list[list[int]], PlainValidator(check_prompt)]
    max_tokens: Annotated[StrictInt, Field(ge=1, le=2**63 - 1)] | None = 16
    logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_COMPLETION_LOGPROBS)] | None = None
    echo: StrictBool | None = False
    best_of: Annotated[StrictInt, Field(ge=1, le=MAX_N)] | None = None  # only == n
    suffix: Annotated[StrictStr, Field(max_length=MAX_STOP_CHARS)] | None = None

    @field_validator("suffix")
    @classmethod
    def _suffix_no_op(cls, value: Any, info: ValidationInfo) -> Any:
        return only_no_op(value, info)

    def prompts(self) -> list[str | list[int]]:
        """The prompts of this request: one string or token list, or a list of them."""
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]
        return list(p)


class TextPart(ClosedModel):
    type: Literal["text"]
    text: StrictStr


class Message(ClosedModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | Annotated[list[TextPart], Field(max_length=64)]
    name: ShortStr | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatRequest(CommonRequest):
    messages: Annotated[list[Message], Field(min_length=1, max_length=1024)]
    max_tokens: Annotated[StrictInt, Field(ge=1, le=2**63 - 1)] | None = None
    max_completion_tokens: Annotated[StrictInt, Field(ge=1, le=2**63 - 1)] | None = None
    logprobs: StrictBool | None = False
    top_logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_CHAT_LOGPROBS)] | None = None
    # accepted only as no-ops (NO_OP) or metadata
    tools: list[Any] | None = None
    tool_choice: ShortStr | dict[ShortStr, Any] | None = None
    parallel_tool_calls: StrictBool | None = None
    modalities: list[ShortStr] | None = None
    store: StrictBool | None = None
    metadata: Annotated[dict[ShortStr, ShortStr], Field(max_length=16)] | None = None
    service_tier: Literal["auto", "default"] | None = None

    @field_validator("tools", "tool_choice", "modalities", "store")
    @classmethod
    def _chat_no_op(cls, value: Any, info: ValidationInfo) -> Any:
        return only_no_op(value, info)

    def chat_messages(self) -> list[dict[str, str]]:
        """Messages as a chat template reads them ("developer" is OpenAI's new "system")."""
        role = {"developer": "system"}
        return [{"role": role.get(m.role, m.role), "content": m.text()} for m in self.messages]


class APIError(Exception):
    """A request the server refuses or fails: its HTTP status and the message the client sees."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "BadRequestError",
        param=None,
        headers: dict[str, str] | None = None,  # e.g. Retry-After on a 429
    ):
        super().__init__(message)
        self.status, self.message, self.type, self.param = status, message, type_, param
        self.headers = headers


def error_body(status: int, message: str, type_: str, param=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": status}}


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """pydantic's errors as one message naming each field and the value it got (the first
    few), and the first field (OpenAI's `param`)."""
    problems: list[str] = []
    params: list[str] = []
    for err in errors:
        loc = [str(p) for p in err.get("loc", ()) if p != "body"]
        if err.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON ({err.get('msg')})")
            continue
        where = ".".join(loc) or "body"
        if err.get("type") == "extra_forbidden":
            text = f"unknown field `{where}`: this server does not implement it; leave it out"
        else:
            text = f"{where}={short_repr(err.get('input'))}: {err.get('msg')}"
        if text not in problems:
            problems.append(text)
            params.append(loc[0] if loc else None)
    shown = problems[:4] + ([f"and {len(problems) - 4} more"] if len(problems) > 4 else [])
    return "; ".join(shown), next((p for p in params if p), None)
