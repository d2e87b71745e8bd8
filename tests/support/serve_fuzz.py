"""Seeded hostile request bodies for the gateway: valid chat and completions bodies with one or two fields
replaced by something a careless or malicious client might send, plus bodies that are not JSON objects at all.

Every body keeps `max_tokens` small unless it is the field under attack, so a run of hundreds stays short on a
CPU engine. `cases(seed, count, model)` is deterministic for a seed.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


@dataclass(frozen=True)
class FuzzCase:
    endpoint: str
    body: bytes
    content_type: str
    what: str  # for a failure message: which fields were replaced by what

    @property
    def stream(self) -> bool:
        try:
            return json.loads(self.body).get("stream") is True
        except (ValueError, AttributeError, RecursionError):
            return False


def _deep(depth: int) -> object:
    value: object = 1
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


HOSTILE: list[object] = [
    2**63, -(2**63) - 1, 2**64 + 7, 10**40, -1, 0, 1.5, 1e308, -1e308, 5e-324,
    "xyz", "", "1", "true", "\u0000\ud7ff\uffff", "A" * 70_000,
    True, False, None, [], {}, [1, "x", None], {"a": {"b": [1, 2]}}, [[[]]],
    _deep(60), _deep(400),
    {"type": "json_schema"}, {"type": "nope"}, [{"type": "function"}], [{"function": {"name": 5}}],
]

# OpenAI fields and the vLLM extensions the gateway relays
COMMON_FIELDS = [
    "model", "stream", "stream_options", "max_tokens", "n", "temperature", "top_p", "top_k", "min_p", "seed",
    "stop", "frequency_penalty", "presence_penalty", "repetition_penalty", "logit_bias", "user",
    "ignore_eos", "min_tokens", "skip_special_tokens", "include_stop_str_in_output", "stop_token_ids",
    "bad_words", "allowed_token_ids", "structured_outputs", "response_format", "priority", "prompt_logprobs",
    "truncate_prompt_tokens", "logprobs", "length_penalty", "use_beam_search", "request_id", "cache_salt",
    "spaces_between_special_tokens", "echo", "add_special_tokens", "guided_json", "guided_regex",
]
CHAT_FIELDS = [
    *COMMON_FIELDS,
    "messages", "top_logprobs", "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls",
    "chat_template", "chat_template_kwargs", "add_generation_prompt", "continue_final_message", "documents",
    "mm_processor_kwargs", "reasoning_effort", "messages.0.role", "messages.0.content", "messages.0.name",
    "messages.0.content.0", "messages.0.content.0.type", "messages.0.content.0.text", "messages.0.tool_calls",
]
COMPLETION_FIELDS = [*COMMON_FIELDS, "prompt", "suffix", "best_of", "prompt.0"]

HOSTILE_MESSAGES: list[object] = [
    [], "hi", [{"content": "x"}], [{"role": "user"}], [{"role": "alien", "content": "x"}],
    [{"role": "user", "content": [{"type": "text"}]}], [{"role": "user", "content": [{"type": "nope"}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": "not a url"}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]}],
    [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "!!", "format": "wav"}}]}],
    [{"role": "user", "content": [1, 2]}], [{"role": "user", "content": {"text": "x"}}],
    [{"role": "tool", "content": "x"}], [{"role": "assistant", "tool_calls": [{"id": 1}]}],
    [{"role": "assistant", "content": None, "tool_calls": "x"}],
    [{"role": "user", "content": "x"}] * 3000,
]


def base_body(endpoint: str, model: str, stream: bool, rng: random.Random) -> dict[str, object]:
    body: dict[str, object] = {"model": model, "max_tokens": rng.choice([1, 2, 4]), "temperature": 0}
    if endpoint == CHAT:
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "Say hi."}]}
                            if rng.random() < 0.2 else {"role": "user", "content": "Say hi."}]
    else:
        body["prompt"] = "Hello, my name is"
    if stream:
        body["stream"] = True
        if rng.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    return body


def _set_path(body: dict[str, object], path: str, value: object) -> None:
    parts = path.split(".")
    target: object = body
    for part in parts[:-1]:
        if isinstance(target, list):
            index = int(part)
            if index >= len(target):
                return
            target = target[index]
        elif isinstance(target, dict):
            if part not in target:
                return
            target = target[part]
        else:
            return
    last = parts[-1]
    if isinstance(target, dict):
        target[last] = value
    elif isinstance(target, list) and last.isdigit() and int(last) < len(target):
        target[int(last)] = value


def _raw_case(rng: random.Random, model: str) -> FuzzCase:
    endpoint = rng.choice([CHAT, COMPLETIONS])
    valid = json.dumps(base_body(endpoint, model, False, rng)).encode()
    choices: list[tuple[bytes, str, str]] = [
        (b"\xff\xfe\x00garbage", "application/json", "raw bytes"),
        (valid[: len(valid) // 2], "application/json", "truncated JSON"),
        (b"[]", "application/json", "a JSON array"),
        (b"null", "application/json", "JSON null"),
        (b'"text"', "application/json", "a JSON string"),
        (valid, "text/plain", "wrong content type"),
        (valid, "application/x-www-form-urlencoded", "form content type"),
        (b"", "application/json", "empty body"),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", "100k-deep nesting"),
        (valid.replace(b'"temperature": 0', b'"temperature": NaN'), "application/json", "NaN"),
        (valid.replace(b'"temperature": 0', b'"temperature": Infinity'), "application/json", "Infinity"),
        (valid[:-1] + b', "max_tokens": 1}', "application/json", "duplicate key"),
        (valid.replace(b'"model": ', b'"model": "\\ud800"', 1)[: -1] + b"}", "application/json", "lone surrogate"),
    ]
    body, content_type, what = rng.choice(choices)
    return FuzzCase(endpoint, body, content_type, what)


def cases(seed: int, count: int, model: str) -> list[FuzzCase]:
    rng = random.Random(seed)
    out: list[FuzzCase] = []
    while len(out) < count:
        if rng.random() < 0.1:
            out.append(_raw_case(rng, model))
            continue
        endpoint = rng.choice([CHAT, COMPLETIONS])
        body = base_body(endpoint, model, rng.random() < 0.4, rng)
        fields = CHAT_FIELDS if endpoint == CHAT else COMPLETION_FIELDS
        changed = []
        for _ in range(rng.choice([1, 1, 2])):
            field = rng.choice(fields)
            pool = HOSTILE_MESSAGES + HOSTILE if field == "messages" else HOSTILE
            value = rng.choice(pool)
            _set_path(body, field, value)
            changed.append(f"{field}={_short(value)}")
        out.append(FuzzCase(endpoint, json.dumps(body).encode(), "application/json", ", ".join(changed)))
    return out


def _short(value: object) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} chars)"


SEED = 20261201
COUNT = 320


def _error_events(body: str) -> list[dict]:
    events = []
    for line in body.splitlines():
        if line.startswith("data: ") and '"error"' in line:
            try:
                payload = json.loads(line[6:])
            except ValueError:
                continue
            events.append(payload.get("error", payload) if isinstance(payload, dict) else {})
    return events


def check_fuzz(http: Callable[[], httpx.Client], model: str, seed: int = SEED, count: int = COUNT) -> Counter[int]:
    """Send the seeded hostile bodies to `model` through the gateway (8 at a time) while watching its readiness;
    fail on any 5xx, any 4xx that is not an OpenAI error body, any error event >= 500 mid-stream, or the model
    marked down. Returns the status counts, for the caller to check the fuzz reached the engine."""
    fuzz = cases(seed, count, model)
    assert sum(c.endpoint == CHAT for c in fuzz) > count // 4
    assert sum(c.endpoint == COMPLETIONS for c in fuzz) > count // 4
    assert sum(c.stream for c in fuzz) > count // 8
    down_seen: list[dict] = []
    stop = threading.Event()

    def watch_readiness() -> None:
        with http() as client:
            while not stop.is_set():
                models = client.get("/ready").json()["models"]
                if models[model]["healthy_upstreams"] < 1:
                    down_seen.append(models)
                time.sleep(0.05)

    watcher = threading.Thread(target=watch_readiness)
    watcher.start()
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    try:
        with http() as client:
            def send(case: FuzzCase) -> tuple[FuzzCase, httpx.Response]:
                return case, client.post(case.endpoint, content=case.body, headers={"content-type": case.content_type})

            with ThreadPoolExecutor(8) as pool:
                for case, reply in pool.map(send, fuzz):
                    statuses[reply.status_code] += 1
                    where = f"{case.endpoint} [{case.what}] -> {reply.status_code}: {reply.text[:200]}"
                    if reply.status_code >= 500:
                        failures.append(where)
                    elif reply.status_code >= 400:
                        error = reply.json().get("error")
                        if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
                            failures.append(f"not an OpenAI error body: {where}")
                    elif case.stream:
                        failures += [f"error event >= 500 mid-stream: {where}" for e in _error_events(reply.text)
                                     if isinstance(e.get("code"), int) and e["code"] >= 500]
    finally:
        stop.set()
        watcher.join()
    print(f"\nfuzz of {model}: {count} bodies, statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n".join(failures[:20])
    assert not down_seen, f"{model} was marked down during the fuzz: {down_seen[0]}"
    return statuses
