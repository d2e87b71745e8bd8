"""An OpenVINO engine: openvino-genai's ContinuousBatchingPipeline behind a small OpenAI-compatible server.

    python -m quantserve.serve.engine_openvino --model IR_DIR --name NAME --port N [--parallel 16 --precision bf16]

No registry package serves openvino-genai over the OpenAI API (OpenVINO Model Server is no Python package), so
this is ours, held to the same tests as the other engines. One thread owns the pipeline: it adds the waiting
requests, runs one batched step over every running sequence, and hands each request its new tokens; the HTTP
side (uvicorn, one event loop) only queues work and relays. It speaks what the gateway relies on:
/v1/chat/completions and /v1/completions (streamed or not, with `stream_options.include_usage` and
`continuous_usage_stats`), /v1/models, /health and /metrics; a client that leaves cancels its request. The key
comes from QUANTSERVE_ENGINE_KEY and guards every route but /health. Each request generates one answer (n = 1).
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import itertools
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse

from quantserve.runtime_servers import ENGINE_KEY_ENV


@dataclass
class _Request:
    id: int
    prompt_ids: Any  # openvino.Tensor [1, n]
    prompt_tokens: int
    config: Any  # openvino_genai.GenerationConfig
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    token_ids: list[int] = field(default_factory=list)
    sent_text: str = ""
    cancelled: bool = False
    handle: Any = None

    def put(self, item: tuple[str, Any]) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, item)


class Engine:
    """The pipeline and the one thread that steps it."""

    def __init__(self, model_dir: str, parallel: int, threads: int | None, precision: str | None,
                 kv_cache_gib: int) -> None:
        import openvino_genai as genai

        self.genai = genai
        scheduler = genai.SchedulerConfig()
        scheduler.cache_size = kv_cache_gib
        scheduler.max_num_seqs = parallel
        # tokens per step: a long prompt is prefilled in chunks beside running decodes, and each step holds the GIL,
        # so this bounds how long /health waits under load (48 requests at once: 2.5 s worst at 256, 1.7 s at 128)
        scheduler.max_num_batched_tokens = 128
        scheduler.dynamic_split_fuse = True
        properties: dict[str, Any] = {}
        if threads:
            properties["INFERENCE_NUM_THREADS"] = threads
        if precision:
            properties["INFERENCE_PRECISION_HINT"] = precision
        self.pipe = genai.ContinuousBatchingPipeline(model_dir, scheduler, "CPU", properties)
        self.tokenizer = self.pipe.get_tokenizer()
        self.eos_id = self.tokenizer.get_eos_token_id()
        self._ids = itertools.count()
        self._pending: list[_Request] = []
        self._active: dict[int, _Request] = {}
        self._wake = threading.Condition()
        self.counters = {"requests": 0, "prompt_tokens": 0, "generation_tokens": 0, "running": 0}
        self._thread = threading.Thread(target=self._run, name="openvino-steps", daemon=True)
        self._thread.start()

    def encode_chat(self, messages: list[dict[str, Any]]) -> Any:
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return self.tokenizer.encode(prompt, add_special_tokens=False).input_ids  # the template has them

    def encode_text(self, text: str) -> Any:
        return self.tokenizer.encode(text).input_ids

    def submit(self, ids: Any, max_tokens: int, temperature: float, top_p: float, seed: int | None,
               ignore_eos: bool, stop: list[str]) -> _Request:
        config = self.pipe.get_config()  # the IR's eos and stop tokens
        config.max_new_tokens = max_tokens
        config.ignore_eos = ignore_eos
        if stop:
            config.stop_strings = set(stop)
        if temperature > 0:
            config.do_sample = True
            config.temperature = temperature
            config.top_p = top_p
            if seed is not None:
                config.rng_seed = seed
        else:
            config.do_sample = False
        try:
            config.validate()  # openvino-genai's own check, here rather than as a failed step
        except Exception as err:
            raise ValueError(str(err).strip().splitlines()[-1][:300]) from None
        request = _Request(next(self._ids), ids, int(ids.shape[1]), config, asyncio.get_running_loop())
        with self._wake:
            self._pending.append(request)
            self._wake.notify()
        return request

    def cancel(self, request: _Request) -> None:
        request.cancelled = True
        with self._wake:
            self._wake.notify()

    # --- the stepping thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                self._iteration()
                # step() holds the GIL for a whole batched step: this hands it to the HTTP loop between steps, or
                # /health would wait out several steps under load and the gateway take the engine for dead
                time.sleep(0.002)
            except Exception as err:  # never let the stepping thread die: its requests fail, later ones run
                for request in [*self._active.values()]:
                    request.put(("error", f"the engine failed: {type(err).__name__}"))
                self._active.clear()

    def _iteration(self) -> None:
        """One round: admit, cancel, step, hand out tokens."""
        running = self.genai.GenerationStatus.RUNNING
        with self._wake:
            while not self._pending and not self._active:
                self._wake.wait()
            new, self._pending = self._pending, []
        for request in new:
            if request.cancelled:
                request.put(("done", "cancelled"))
                continue
            try:
                request.handle = self.pipe.add_request(request.id, request.prompt_ids, request.config)
            except Exception as err:
                request.put(("error", f"the engine refused the request: {type(err).__name__}"))
                continue
            self._active[request.id] = request
            self.counters["requests"] += 1
            self.counters["prompt_tokens"] += request.prompt_tokens
        for request in list(self._active.values()):
            if request.cancelled:
                request.handle.cancel()
                self._finish(request, "cancelled")
        self.counters["running"] = len(self._active)
        if self.pipe.has_non_finished_requests():
            try:
                self.pipe.step()
            except Exception as err:  # a failed step fails its requests, not the server
                for request in list(self._active.values()):
                    request.put(("error", f"the engine failed: {type(err).__name__}"))
                    self._active.pop(request.id, None)
                return
        for request in list(self._active.values()):
            reason = None
            while request.handle.can_read():
                for output in request.handle.read().values():
                    self.counters["generation_tokens"] += len(output.generated_ids)
                    request.token_ids.extend(output.generated_ids)
                    reason = _finish_reason(self.genai, output.finish_reason) or reason
            self._emit(request)
            status = request.handle.get_status()
            if reason or status != running:
                self._finish(request, reason or ("length" if status == self.genai.GenerationStatus.FINISHED
                                                 else "error"))

    def _emit(self, request: _Request) -> None:
        if not request.token_ids:
            return
        text = self.tokenizer.decode(request.token_ids)
        if text.endswith("\ufffd"):  # half a UTF-8 character: wait for the rest
            return
        if len(text) > len(request.sent_text) and text.startswith(request.sent_text):
            request.put(("delta", (text[len(request.sent_text):], len(request.token_ids))))
            request.sent_text = text

    def _finish(self, request: _Request, reason: str) -> None:
        text = self.tokenizer.decode(request.token_ids) if request.token_ids else ""
        if len(text) > len(request.sent_text) and text.startswith(request.sent_text):  # what _emit held back
            request.put(("delta", (text[len(request.sent_text):], len(request.token_ids))))
            request.sent_text = text
        self._active.pop(request.id, None)
        request.put(("done", reason))



def _finish_reason(genai: Any, value: Any) -> str | None:
    reasons = genai.GenerationFinishReason
    return {reasons.STOP: "stop", reasons.LENGTH: "length"}.get(value)


def create_app(engine: Engine, name: str, key: str | None, max_model_len: int):
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    def error(status: int, message: str, param: str | None = None, code: str | None = None,
              kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}},
                            status_code=status)

    @app.middleware("http")
    async def check_key(request: Request, call_next):
        if key and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return error(401, "Invalid API key", code="invalid_api_key", kind="authentication_error")
        return await call_next(request)

    @app.get("/health")
    async def health() -> Response:
        return Response(status_code=200)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": created,
                                            "owned_by": "quantserve", "max_model_len": max_model_len}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        lines = [f"openvino:{k}_total {v}" if k != "running" else f"openvino:requests_running {v}"
                 for k, v in engine.counters.items()]
        return PlainTextResponse("\n".join(lines) + "\n")

    async def generate(request: Request, chat: bool) -> Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            return error(400, "the body is not valid JSON")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object")
        problem = _check(body, chat, name)
        if problem is not None:
            return error(*problem)
        if chat:
            messages = [{"role": m["role"], "content": _text(m.get("content"))} for m in body["messages"]]
            ids = await asyncio.to_thread(engine.encode_chat, messages)
        else:
            ids = await asyncio.to_thread(engine.encode_text, body["prompt"])
        prompt_tokens = int(ids.shape[1])
        if prompt_tokens == 0:
            return error(400, "the prompt is empty", param="messages" if chat else "prompt")
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or (max_model_len - prompt_tokens)
        if prompt_tokens + max_tokens > max_model_len:
            return error(400, f"This model's maximum context length is {max_model_len} tokens; the prompt has "
                         f"{prompt_tokens} and max_tokens asks for {max_tokens}", param="max_tokens",
                         code="context_length_exceeded")
        stop = body.get("stop") or []
        try:
            job = engine.submit(ids, int(max_tokens), float(body.get("temperature") or 0.0),
                                float(body.get("top_p") if body.get("top_p") is not None else 1.0), body.get("seed"),
                                bool(body.get("ignore_eos")), [stop] if isinstance(stop, str) else list(stop))
        except ValueError as err:
            return error(400, f"invalid generation parameters: {err}")
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        if body.get("stream"):
            options = body.get("stream_options") or {}
            return StreamingResponse(_stream(engine, job, ident, name, chat, bool(options.get("include_usage")),
                                             bool(options.get("continuous_usage_stats"))),
                                     media_type="text/event-stream")
        try:
            text, reason = await _collect(job)
        except asyncio.CancelledError:
            engine.cancel(job)
            raise
        if reason == "error":
            return error(500, "the engine failed while generating", kind="server_error")
        usage = _usage(job)
        choice = {"index": 0, "finish_reason": reason, "logprobs": None}
        choice.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        return JSONResponse({"id": ident, "object": "chat.completion" if chat else "text_completion",
                             "created": int(time.time()), "model": name, "choices": [choice], "usage": usage})

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await generate(request, chat=True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await generate(request, chat=False)

    return app


def _text(content: Any) -> str:
    if isinstance(content, list):  # OpenAI's content parts: the text ones, joined
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return content or ""


def _check(body: dict[str, Any], chat: bool, name: str) -> tuple[int, str, str | None, str | None] | None:
    """(status, message, param, code) for a body this engine cannot serve, else None."""
    if body.get("model") != name:
        return 404, f"The model '{str(body.get('model'))[:200]}' does not exist", "model", "model_not_found"
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
            return 400, "'messages' must be a non-empty list of {role, content}", "messages", None
    elif not isinstance(body.get("prompt"), str):
        return 400, "'prompt' must be one string here (one answer per request)", "prompt", None
    for param in ("n", "best_of"):
        if body.get(param) not in (None, 1):
            return 400, f"'{param}' must be 1: this engine generates one answer per request", param, None
    if body.get("logprobs") or body.get("top_logprobs"):
        return 400, "logprobs are not available from this engine", "logprobs", None
    for param in ("max_tokens", "max_completion_tokens"):
        value = body.get(param)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            return 400, f"'{param}' must be a positive integer", param, None
    for param, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = body.get(param)
        if value is not None and (not isinstance(value, int | float) or isinstance(value, bool)
                                  or not low <= value <= high):
            return 400, f"'{param}' must be a number from {low} to {high}", param, None
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (isinstance(stop, list)
                                                           and all(isinstance(s, str) for s in stop))):
        return 400, "'stop' must be a string or a list of strings", "stop", None
    seed = body.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**63):
        return 400, "'seed' must be a non-negative integer", "seed", None
    return None


def _usage(job: _Request, done: int | None = None) -> dict[str, int]:
    """`done`: the tokens behind the text relayed so far (a running count); None: all generated."""
    done = len(job.token_ids) if done is None else done
    return {"prompt_tokens": job.prompt_tokens, "completion_tokens": done, "total_tokens": job.prompt_tokens + done}


async def _collect(job: _Request) -> tuple[str, str]:
    parts: list[str] = []
    while True:
        kind, value = await job.events.get()
        if kind == "delta":
            parts.append(value[0])
        elif kind == "error":
            return "".join(parts), "error"
        else:
            return "".join(parts), value


async def _stream(engine: Engine, job: _Request, ident: str, name: str, chat: bool, final_usage: bool,
                  continuous: bool) -> AsyncIterator[bytes]:
    created = int(time.time())
    kind = "chat.completion.chunk" if chat else "text_completion"

    def event(choice: dict[str, Any], usage: dict[str, int] | None = None) -> bytes:
        chunk: dict[str, Any] = {"id": ident, "object": kind, "created": created, "model": name, "choices": [choice]}
        if usage is not None:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()

    try:
        if chat:
            yield event({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
        while True:
            what, value = await job.events.get()
            if what == "delta":
                piece = {"content": value[0]} if chat else None
                choice = {"index": 0, "delta": piece, "finish_reason": None} if chat else \
                    {"index": 0, "text": value[0], "finish_reason": None}
                yield event(choice, _usage(job, value[1]) if continuous else None)
                continue
            if what == "error":
                body = {"error": {"message": "the engine failed while generating", "type": "server_error",
                                  "code": 500}}
                yield f"data: {json.dumps(body)}\n\n".encode()
                break
            finish = {"index": 0, "delta": {}, "finish_reason": value} if chat else \
                {"index": 0, "text": "", "finish_reason": value}
            yield event(finish, _usage(job) if continuous else None)
            if final_usage:
                chunk = {"id": ident, "object": kind, "created": created, "model": name, "choices": [],
                         "usage": _usage(job)}
                yield f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode()
            break
        yield b"data: [DONE]\n\n"
    finally:
        engine.cancel(job)  # a client that left (or a finished request: then a no-op) frees its sequence


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m quantserve.serve.engine_openvino")
    parser.add_argument("--model", required=True, help="an OpenVINO IR folder with its tokenizer IRs")
    parser.add_argument("--name", required=True, help="the served model name")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=16, help="sequences decoded together")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--precision", choices=("bf16", "f16", "f32"), default=None,
                        help="inference precision; default: OpenVINO's choice for this CPU")
    parser.add_argument("--kv-cache-gib", type=int, default=1)
    parser.add_argument("--max-model-len", type=int, default=2048)
    args = parser.parse_args(argv)
    import uvicorn

    engine = Engine(args.model, args.parallel, args.threads, args.precision, args.kv_cache_gib)
    app = create_app(engine, args.name, os.environ.get(ENGINE_KEY_ENV), args.max_model_len)
    print(f"OpenVINO engine for {args.name} on http://{args.host}:{args.port} ({args.parallel} sequences, "
          f"precision {args.precision or 'default'})", flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    finally:
        sys.stdout.flush()
        # uvicorn has stopped (SIGTERM): nothing is left to hand out, and tearing the pipeline down at interpreter
        # exit was seen to hang in a futex wait, so the process ends here
        os._exit(0)


if __name__ == "__main__":
    main()
