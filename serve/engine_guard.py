"""The engine key on every route of a vLLM server but /health.

vLLM's own key check (VLLM_API_KEY) guards only paths under /v1, /v2, /inference and /cohere: /invocations (which
runs chat and completions), /tokenize, /detokenize, /pooling, /metrics, /load and the rest answer anyone who
reaches the port, and so skip the gateway's keys, limits and ledger. vLLM loads this class with
`--middleware quantserve.serve.engine_guard.EngineKeyGuard` (serve/vllm_command.py renders it; the engine image
copies this one file, so it imports nothing of quantserve). It reads the same VLLM_API_KEY.

llama.cpp's server guards every route but /health with its own key check, and our OpenVINO server every route
but /health; tests/integration/serve checks all three on real engines.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

OPEN_PATHS = frozenset({"/health"})  # what the supervisor, the gateway's health monitor and k8s probes call
KEY_ENV = "VLLM_API_KEY"
_DENIED = json.dumps({"error": {"message": "this engine answers only the quantserve gateway (engine key)",
                                "type": "authentication_error", "param": None, "code": "invalid_api_key"}}).encode()


class EngineKeyGuard:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        key = os.environ.get(KEY_ENV)
        self._digest = hashlib.sha256(key.encode()).digest() if key else None

    def _allowed(self, scope: Scope) -> bool:
        path = scope.get("path", "")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if scope["type"] == "http" and path in OPEN_PATHS:
            return True
        given = b""
        for name, value in scope.get("headers") or ():
            if name.lower() == b"authorization":
                given = value
                break
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        return hmac.compare_digest(hashlib.sha256(token.strip()).digest(), self._digest or b"")

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if self._digest is None or scope["type"] not in ("http", "websocket") or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})  # policy violation, before the handshake
            return
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(_DENIED)).encode()),
                                (b"www-authenticate", b"Bearer")]})
        await send({"type": "http.response.body", "body": _DENIED})
