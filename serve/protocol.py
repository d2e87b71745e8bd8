"""Request and response shapes the gateway itself reads. Everything else in a body passes through to vLLM,
which validates its own parameters and answers 400 itself (reshaped by errors.from_upstream)."""

from __future__ import annotations

import json
import time
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quantserve.serve.errors import OpenAIError


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class _GenerationRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    n: int | None = Field(default=None, ge=1)


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[Any] | None = None


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)

    def prompt_text(self) -> str:
        return json.dumps([m.model_dump(exclude_none=True) for m in self.messages])[:4000]


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]]

    def prompt_text(self) -> str:
        return (self.prompt if isinstance(self.prompt, str) else json.dumps(self.prompt))[:4000]


GenerationRequest = ChatCompletionRequest | CompletionRequest
T = TypeVar("T", ChatCompletionRequest, CompletionRequest)


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "quantserve"
    # quantserve's own fields (OpenAI clients keep unknown fields in `model_extra`): what the local engines run.
    # None for a model served only by external upstreams.
    format: str | None = None  # checkpoint format: full, w8a8-int8, w4a16-int4, bnb-nf4, bnb-int8, other:...
    dtype: str | None = None
    dtype_from: str | None = None  # "probe": fastest measured on this machine; "config": set in serve.yaml


class ModelList(BaseModel):
    object: str = "list"
    data: list[ModelCard]


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


def parse_body(raw: bytes, schema: type[T]) -> tuple[T, dict[str, Any]]:
    """The validated request and the decoded dict (what is forwarded, possibly amended)."""
    try:
        payload = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise OpenAIError(400, f"request body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(payload, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
    try:
        return schema.model_validate(payload), payload
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise OpenAIError(400, f"{param or 'body'}: {first['msg']}", param=param) from None
