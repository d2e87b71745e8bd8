"""OpenAI-shaped errors: `{"error": {"message", "type", "param", "code"}}` with the status a client expects.

Every path out of the gateway goes through here, including FastAPI's own 404/405/422 and unexpected
exceptions, so no client ever sees a stack trace or a `{"detail": ...}` body.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("quantserve.serve.errors")

_DEFAULT_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    499: "client_closed_request",
}


def error_type_for(status: int) -> str:
    return _DEFAULT_TYPE.get(status, "server_error" if status >= 500 else "invalid_request_error")


class OpenAIError(Exception):
    """Raise anywhere in a request; the handler turns it into the OpenAI error body and status."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or error_type_for(status)
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str | None]]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return SafeJSONResponse(self.body(), status_code=self.status, headers=self.headers)

    def sse_event(self) -> bytes:
        """How an error reaches a client whose stream has already begun: openai clients raise on it."""
        return b"data: " + json.dumps(self.body(), ensure_ascii=True).encode() + b"\n\n"


# vLLM answers 500 when a request's shape reaches code that raises an unhandled Python error, and llama.cpp's
# server when it cannot read the messages or tools (a C++ JSON exception) or gets an image it has no encoder for;
# the message then reads like one of these. Such an answer is the client's mistake, not an engine failure.
_CONTENT_FAULT = re.compile(
    r"object has no attribute|object is not (subscriptable|iterable|callable)|unhashable type|index out of range"
    r"|invalid literal|unsupported operand|takes \d+ positional|missing \d+ required|must be (str|int|float|a|an)\b"
    r"|validation error|failed to parse (messages|tools)|\[json\.exception\.|input is not supported", re.IGNORECASE)


def from_upstream(status: int, payload: bytes) -> OpenAIError:
    """Reshape an engine's error reply. 4xx keep their status and message (vLLM's own 400 for a prompt over
    the context length, say). A 5xx that vLLM's message shows to come from the request's content (a Python
    error on a wrong shape, or a feature it does not implement) is the client's 400; any other 5xx becomes a
    generic 502, so engine internals do not leak."""
    message, param, code = "", None, None
    try:
        parsed = json.loads(payload)
        err = parsed.get("error", parsed) if isinstance(parsed, dict) else {}
        if isinstance(err, dict):
            message = str(err.get("message") or err.get("detail") or "")
            param = err.get("param") if isinstance(err.get("param"), str) else None
            code = err.get("code") if isinstance(err.get("code"), str) else None
    except (ValueError, UnicodeDecodeError):
        pass
    if status == 501 and message:
        return OpenAIError(400, f"the engine does not support this request: {message}", param=param,
                           code="unsupported_request")
    if status >= 500 and _CONTENT_FAULT.search(message):
        return OpenAIError(400, f"the engine could not process this request's content: {message}", param=param,
                           code="invalid_request_content")
    if status >= 500:
        return OpenAIError(502, "the model engine failed to answer this request", code="upstream_error")
    if "maximum context length" in message or "context length" in message.lower():
        code = code or "context_length_exceeded"
    message = message or f"the engine refused the request (HTTP {status})"
    return OpenAIError(status, message, param=param, code=code)


class SafeJSONResponse(JSONResponse):
    """ASCII-escaped JSON: a client's lone surrogate (valid JSON, not valid UTF-8) echoed in an error message
    would make the default encoder raise, and the client would get a 500 for its own 400."""

    def render(self, content: object) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


ErrorHook = Callable[[Request, OpenAIError], None]


def install_error_handlers(app: FastAPI, on_error: ErrorHook | None = None) -> None:
    def finish(request: Request, err: OpenAIError) -> JSONResponse:
        if on_error is not None:
            try:
                on_error(request, err)
            except Exception:  # accounting must never turn a clean error into a 500
                log.exception("error hook failed")
        return err.response()

    @app.exception_handler(OpenAIError)
    async def _openai_error(request: Request, err: OpenAIError) -> JSONResponse:
        return finish(request, err)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return finish(request, OpenAIError(400, f"{param or 'request'}: {first.get('msg')}", param=param))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, err: StarletteHTTPException) -> JSONResponse:
        known = {404: f"unknown path {request.url.path}", 405: f"method {request.method} not allowed here"}
        message = known.get(err.status_code, str(err.detail))
        return finish(request, OpenAIError(err.status_code, message, headers=dict(err.headers or {})))

    app.add_middleware(CatchAllMiddleware, on_error=finish)


class CatchAllMiddleware:
    """Turns any exception that escapes a route into a generic OpenAI 500.

    Not an `exception_handler(Exception)`: Starlette runs that one in its outermost middleware and re-raises
    afterwards, so uvicorn closes the connection, with the request body possibly unread, and the client may see
    a reset instead of the 500.
    """

    def __init__(self, app: ASGIApp, on_error: Callable[[Request, OpenAIError], JSONResponse]) -> None:
        self.app = app
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def watch_start(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch_start)
        except Exception as err:
            request = Request(scope)
            log.error("unhandled error on %s %s: %s", request.method, request.url.path, err, exc_info=err)
            if started:
                return  # the status line is out; the connection just ends
            failure = OpenAIError(500, "internal error in the gateway; see its log", code="internal_error")
            await self.on_error(request, failure)(scope, receive, send)
