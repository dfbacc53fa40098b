"""What the HTTP API accepts and how it says no: request bodies and OpenAI-style errors.

The request models are strict ("5" is not an integer) and ignore fields they do not know, as
OpenAI's API does. An `APIError` raised anywhere in a handler becomes the JSON body OpenAI's
clients parse: `{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr

Number = StrictFloat | StrictInt


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class CommonRequest(BaseModel):
    """The fields /v1/completions and /v1/chat/completions share."""

    model_config = ConfigDict(extra="ignore")

    model: StrictStr
    temperature: Number = 1.0
    top_p: Number = 1.0
    top_k: StrictInt = 0  # 0 or -1: off (vLLM's convention)
    seed: StrictInt | None = None
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    ignore_eos: StrictBool = False
    stop_token_ids: list[StrictInt] | None = None
    n: StrictInt = 1


class CompletionRequest(CommonRequest):
    prompt: StrictStr | Annotated[list[StrictInt], Field(min_length=1)] | list[StrictStr]
    max_tokens: StrictInt = 16


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: StrictStr


class ChatRequest(CommonRequest):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None


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
