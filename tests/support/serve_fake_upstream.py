"""A FAKE OpenAI-compatible server for unit tests of the gateway's own logic (routing, errors, streaming,
accounting). It is not vLLM and imitates only what the gateway relies on: /health, the two generation
endpoints, vLLM's usage chunk and vLLM's error shape. Real vLLM is covered by tests/integration/serve.

Magic words in the prompt pick a behaviour: TOO_LONG (vLLM's 400 for an over-context prompt), CRASH (the
connection drops mid-stream), ERROR_EVENT (an error event mid-stream), FLAT_ERROR_EVENT (the same in vLLM's older
flat shape, a 400), BOOM (a 500 with internals in the
body), SLOW (0.2 s per token), BIG (a 64 KiB answer), FLOOD (a stream of 400 chunks of 64 KiB, as fast as it is
read). `n` (and a list `prompt` on /v1/completions) stream one chunk per choice per token with vLLM's running
usage per choice: prompt_tokens of that choice's prompt, completion_tokens of that choice.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

TOKENS = ["Hello", " from", " the", " fake", " upstream", "."]
PROMPT_TOKENS = 7


@dataclass
class FakeState:
    requests: list[dict[str, Any]] = field(default_factory=list)
    cancelled: int = 0  # streams whose client (the gateway) went away before the end
    completed: int = 0
    healthy: bool = True


def _text_of(body: dict[str, Any]) -> str:
    if "messages" in body:
        return json.dumps(body["messages"])
    return json.dumps(body.get("prompt", ""))


def create_fake_app(state: FakeState) -> FastAPI:
    app = FastAPI()

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({}, status_code=200 if state.healthy else 503)

    async def generate(request: Request, chat: bool) -> Any:
        body = await request.json()
        state.requests.append(body)
        text = _text_of(body)
        if "TOO_LONG" in text:
            return JSONResponse({"error": {
                "message": "This model's maximum context length is 2048 tokens. However, you requested "
                           "5000 tokens in the messages. Please reduce the length of the messages.",
                "type": "BadRequestError", "param": None, "code": 400}}, status_code=400)
        if "BOOM" in text:
            return JSONResponse({"error": {"message": "Traceback (most recent call last): secret internals",
                                           "type": "InternalServerError", "code": 500}}, status_code=500)
        tokens = TOKENS[: body.get("max_tokens") or len(TOKENS)]
        if "BIG" in text:
            tokens = ["x" * 65536]
        prompt = body.get("prompt")
        prompts = len(prompt) if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int) else 1
        choices = (body.get("n") or 1) * prompts
        usage = {"prompt_tokens": PROMPT_TOKENS * prompts, "completion_tokens": len(tokens) * choices,
                 "total_tokens": PROMPT_TOKENS * prompts + len(tokens) * choices}
        model = body["model"]
        delay = 0.2 if "SLOW" in text else 0.0
        if not body.get("stream"):
            for _ in tokens if delay else ():
                await asyncio.sleep(delay)
                if await request.is_disconnected():  # like vLLM's with_cancellation: stop for a gone client
                    state.cancelled += 1
                    return JSONResponse({}, status_code=499)
            state.completed += 1
            if chat:
                answers = [{"index": i, "message": {"role": "assistant", "content": "".join(tokens)},
                            "finish_reason": "length"} for i in range(choices)]
            else:
                answers = [{"index": i, "text": "".join(tokens), "finish_reason": "length"} for i in range(choices)]
            kind = "chat.completion" if chat else "text_completion"
            return JSONResponse({"id": "fake-1", "object": kind, "created": int(time.time()), "model": model,
                                 "choices": answers, "usage": usage})
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        # llama.cpp's server has no continuous usage; timings_per_token puts its running counts on every chunk
        llama_timings = bool(body.get("timings_per_token"))
        continuous = include_usage and bool(body["stream_options"].get("continuous_usage_stats")) and not llama_timings

        async def events() -> Any:
            try:
                if "FLOOD" in text:
                    chunk = {"id": "fake-1", "object": "chunk", "model": model,
                             "choices": [{"index": 0, "delta": {"content": "y" * 65536}}]}
                    for _ in range(400):
                        yield f"data: {json.dumps(chunk)}\n\n".encode()
                    yield b"data: [DONE]\n\n"
                    state.completed += 1
                    return
                for i, tok in enumerate(tokens):
                    if delay:
                        await asyncio.sleep(delay)
                    if "CRASH" in text and i == 2:
                        raise RuntimeError("engine died")  # uvicorn drops the connection mid-body
                    if "FLAT_ERROR_EVENT" in text and i == 2:  # vLLM's older flat form of an error event
                        err = {"object": "error", "message": "bad request", "type": "BadRequestError", "code": 400}
                        yield f"data: {json.dumps(err)}\n\n".encode()
                        break
                    if "ERROR_EVENT" in text and i == 2:  # what vLLM sends when generation fails mid-way
                        err = {"error": {"message": "Traceback: secret internals", "type": "x", "code": 500}}
                        yield f"data: {json.dumps(err)}\n\n".encode()
                        break
                    for index in range(choices):
                        delta = {"content": tok} if chat else None
                        choice = {"index": index, "delta": delta} if chat else {"index": index, "text": tok}
                        chunk = {"id": "fake-1", "object": "chunk", "model": model, "choices": [choice]}
                        if continuous:  # vLLM's continuous_usage_stats: this choice's running usage
                            chunk["usage"] = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": i + 1,
                                              "total_tokens": PROMPT_TOKENS + i + 1}
                        if llama_timings:  # llama.cpp: evaluated and cached prompt tokens, tokens predicted so far
                            chunk["timings"] = {"cache_n": 3, "prompt_n": PROMPT_TOKENS - 3, "prompt_ms": 1.5,
                                                "predicted_n": i + 1, "predicted_ms": 2.0}
                        yield f"data: {json.dumps(chunk)}\n\n".encode()
                if include_usage:
                    yield f"data: {json.dumps({'id': 'fake-1', 'choices': [], 'usage': usage})}\n\n".encode()
                yield b"data: [DONE]\n\n"
                state.completed += 1
            except asyncio.CancelledError:
                state.cancelled += 1
                raise

        return StreamingResponse(events(), media_type="text/event-stream")

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        return await generate(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await generate(request, chat=False)

    return app


class ThreadedServer:
    """uvicorn on a loopback port in a daemon thread."""

    def __init__(self, app: FastAPI, port: int) -> None:
        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("fake upstream did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
