"""A tiny OpenAI-style server for the eval tests: real HTTP + SSE on 127.0.0.1, scripted per model.

good     streams CHUNKS content chunks, a finish chunk, a usage chunk, then [DONE]
err500   answers HTTP 500 with an OpenAI error body
broken   streams two chunks, then the connection drops
errevent streams one chunk, then an error event (as vLLM does on engine errors)
slow     waits 5 s before the first chunk
Non-streaming requests (tasks) answer with ANSWERS[model] or "Paris".
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

API_KEY = "sk-test"
CHUNKS = 4
PROMPT_TOKENS = 7
MODELS = ["good", "good-gptq-w4a16", "err500", "broken", "errevent", "slow"]


def _chunk(model: str, delta: dict, finish: str | None = None) -> str:
    body = {"id": "x", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n"


def make_app(answers: dict[str, str]) -> FastAPI:
    app = FastAPI()
    app.state.counts = Counter()

    def authorized(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {API_KEY}"

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        if not authorized(request):
            return JSONResponse({"error": {"message": "bad key"}}, status_code=401)
        return JSONResponse({"object": "list", "data": [{"id": m, "object": "model"} for m in MODELS]})

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(request: Request) -> JSONResponse | StreamingResponse:
        body = await request.json()
        model = body["model"]
        app.state.counts[model] += 1
        if model == "err500":
            return JSONResponse({"error": {"message": "engine exploded", "code": 500}}, status_code=500)
        if not body.get("stream"):
            text = answers.get(model, "Paris")
            return JSONResponse({"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                              "finish_reason": "stop"}]})

        async def events() -> AsyncIterator[str]:
            yield _chunk(model, {"role": "assistant", "content": ""})
            if model == "slow":
                await asyncio.sleep(5)
            n = 2 if model == "broken" else 1 if model == "errevent" else CHUNKS
            for i in range(n):
                await asyncio.sleep(0.01)
                yield _chunk(model, {"content": f"tok{i} "})
            if model == "broken":
                raise RuntimeError("connection dropped mid-stream")
            if model == "errevent":
                yield f"data: {json.dumps({'error': {'message': 'engine overloaded', 'code': 503}})}\n\n"
                yield "data: [DONE]\n\n"
                return
            yield _chunk(model, {}, finish="stop")
            usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": CHUNKS, "total_tokens": 11}
            yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@contextmanager
def serve(answers: dict[str, str] | None = None) -> Iterator[tuple[str, FastAPI]]:
    """Run the app on a free loopback port in a thread; yields (base_url, app)."""
    app = make_app(answers or {})
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("fake OpenAI server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(timeout=5)
        sock.close()


