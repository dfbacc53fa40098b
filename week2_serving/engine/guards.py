"""What the server refuses before a handler runs, and how every error becomes an OpenAI body.

Two plain ASGI wrappers (Starlette's BaseHTTPMiddleware would slow every stream):
- `APIKeyMiddleware`: 401 without `Authorization: Bearer <key>` on every route but /health
  (and /metrics when it is public); the key is compared in constant time;
- `BodyLimitMiddleware`: 413 for a body over the limit (from Content-Length, or counted while a
  chunked body arrives, before any JSON parsing), 415 for a POST that is not JSON.

The exception handlers answer malformed JSON, unknown routes, wrong methods and unexpected
faults with `{"error": {...}}` bodies, so a client always gets something it can parse.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.results import get_logger
from week2_serving.engine.protocol import APIError, error_body, validation_message

log = get_logger("week2.engine.server")
OPEN_PATHS = ("/health",)  # answered without a key: a supervisor's liveness probe
ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "RequestTooLargeError",
    415: "UnsupportedMediaTypeError",
    429: "RateLimitError",
}


@dataclass
class ServingLimits:
    """What one server accepts; the command line's flags of the same names."""

    max_num_waiting: int | None = 512  # requests queued beyond it get 429 (None: no bound)
    # seconds a request may take in all, queueing included (None: no limit); generous, so that
    # a long sequential-scheduling benchmark on a CPU is never cut short
    request_timeout: float | None = 3600.0
    max_body_bytes: int = 1 << 20  # largest request body accepted (413 beyond)
    metrics_public: bool = False  # with an API key, /metrics still answers without one

    def __post_init__(self) -> None:
        if self.max_num_waiting is not None and self.max_num_waiting < 1:
            raise ValueError(f"max_num_waiting={self.max_num_waiting}: use 1 or more (or None)")
        if self.request_timeout is not None and not self.request_timeout > 0:
            raise ValueError(f"request_timeout={self.request_timeout}: use seconds > 0 (or None)")
        if self.max_body_bytes < 1:
            raise ValueError(f"max_body_bytes={self.max_body_bytes}: use 1 or more")


async def send_error(scope, receive, send, status: int, message: str) -> None:
    """An OpenAI error response written straight to ASGI `send` (from a middleware)."""
    body = error_body(status, message, ERROR_TYPES.get(status, "Error"))
    await JSONResponse(body, status_code=status)(scope, receive, send)


class APIKeyMiddleware:
    """401 unless `Authorization: Bearer <key>`; /health (and public /metrics) stay open."""

    def __init__(self, app, api_key: str, metrics_public: bool = False):
        self.app, self.wanted = app, f"Bearer {api_key}".encode()
        self.open = OPEN_PATHS + (("/metrics",) if metrics_public else ())

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in self.open:
            auth = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(auth, self.wanted):
                await send_error(scope, receive, send, 401, "missing or wrong API key")
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Read a POST body whole (up to `limit` bytes) before the app sees it, refusing what is
    too large or not JSON; later `receive()` calls go to the client (disconnect notices)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        problem = self.check_headers(headers)
        if problem is not None:
            await send_error(scope, receive, send, *problem)
            return
        body, more = b"", True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left before its body arrived
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.limit:
                await send_error(
                    scope, receive, send, 413, self.too_large(f"more than {self.limit}")
                )
                return
        await self.app(scope, replay(body, receive), send)

    def check_headers(self, headers: dict[bytes, bytes]) -> tuple[int, str] | None:
        kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if kind != b"application/json" and not kind.endswith(b"+json"):
            shown = kind.decode("latin-1") or "none"
            return 415, f"content type {shown!r}: send the body as application/json"
        length = headers.get(b"content-length")
        if length is None:
            return None
        if not length.isdigit():
            return 400, f"Content-Length {length.decode('latin-1')!r} is not a number"
        if int(length) > self.limit:
            return 413, self.too_large(int(length))
        return None

    def too_large(self, size) -> str:
        return (
            f"the request body is {size} bytes; this server takes at most {self.limit} "
            "(--max-body-bytes)"
        )


def replay(body: bytes, receive):
    """A `receive` that first hands over the body already read, then listens to the client."""
    sent = False

    async def receive_again():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


# --- errors as OpenAI bodies --------------------------------------------------------------------
async def on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
    """pydantic's complaints as one OpenAI error (400) naming the field and the value."""
    message, param = validation_message(exc.errors())
    return JSONResponse(error_body(400, message, "BadRequestError", param), status_code=400)


async def on_api_error(_: Request, exc: APIError) -> JSONResponse:
    body = error_body(exc.status, exc.message, exc.type, exc.param)
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Unknown routes (404) and wrong methods (405), said the OpenAI way."""
    message = f"{request.method} {request.url.path}: {exc.detail}"
    body = error_body(exc.status_code, message, ERROR_TYPES.get(exc.status_code, "Error"))
    return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    """A fault while handling one request fails that request only (500); the server goes on."""
    log.error("%s %s failed: %r", request.method, request.url.path, exc, exc_info=exc)
    body = error_body(500, f"internal error: {exc!r}", "InternalServerError")
    return JSONResponse(body, status_code=500)


def add_guards(app: FastAPI, api_key: str | None, limits: ServingLimits) -> None:
    """The error handlers and wrappers; the key check runs first, then the body limit."""
    app.add_exception_handler(RequestValidationError, on_invalid)
    app.add_exception_handler(APIError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)
    app.add_middleware(BodyLimitMiddleware, limit=limits.max_body_bytes)
    if api_key:  # added last: the outermost wrapper, so no body is read without a key
        app.add_middleware(APIKeyMiddleware, api_key=api_key, metrics_public=limits.metrics_public)


async def wait_disconnect(request) -> None:
    """Return when the client closes its connection (the body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
