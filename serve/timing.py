"""`x-quantserve-overhead-ms` on every response: the time a request spent in the gateway itself.

A proxied answer sets it where the gateway knows its parts (arrival to upstream send, less the wait for an engine
slot, plus upstream reply to response); every other response (errors, /v1/models, /health) gets arrival to
response start here, all of which is the gateway's.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

OVERHEAD_HEADER = "x-quantserve-overhead-ms"
_HEADER_BYTES = OVERHEAD_HEADER.encode()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f}"


class OverheadHeaderMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == _HEADER_BYTES for name, _ in headers):
                    headers.append((_HEADER_BYTES, ms(time.perf_counter() - started).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)
