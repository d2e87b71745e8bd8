"""Request and response shapes the gateway itself reads. Everything else in a body passes through to vLLM,
which validates its own parameters and answers 400 itself (reshaped by errors.from_upstream)."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from quantserve.serve.errors import OpenAIError


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None
    continuous_usage_stats: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str


# Types and ranges of what the gateway relays: OpenAI's documented ranges for OpenAI fields, vLLM's for its
# extensions. vLLM checks most of these itself, but some wrong shapes reach code that raises an unhandled
# exception (a 500 and a closed connection), and its own messages do not always name the field.
_INT32_MAX = 2**31 - 1
Int64 = Annotated[int, Field(ge=-(2**63), le=2**63 - 1)]
TokenCount = Annotated[int, Field(ge=1, le=_INT32_MAX)]
TokenId = Annotated[int, Field(ge=0, le=_INT32_MAX)]
Finite = Annotated[float, Field(allow_inf_nan=False)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
FreeForm = dict[str, Any]


class _GenerationRequest(BaseModel):
    """Unknown fields pass through untouched: vLLM's newer extensions stay usable without a gateway release."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str = Field(min_length=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: TokenCount | None = None
    n: Annotated[int, Field(ge=1, le=128)] | None = None
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    frequency_penalty: Penalty | None = None
    presence_penalty: Penalty | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = None
    seed: Int64 | None = None
    stop: str | list[str] | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    # vLLM's sampling extensions
    top_k: Annotated[int, Field(ge=-1, le=_INT32_MAX)] | None = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0.0, le=1e4)] | None = None
    length_penalty: Finite | None = None
    min_tokens: Annotated[int, Field(ge=0, le=_INT32_MAX)] | None = None
    ignore_eos: bool | None = None
    use_beam_search: bool | None = None
    skip_special_tokens: bool | None = None
    spaces_between_special_tokens: bool | None = None
    include_stop_str_in_output: bool | None = None
    add_special_tokens: bool | None = None
    stop_token_ids: list[TokenId] | None = None
    allowed_token_ids: list[TokenId] | None = None
    bad_words: list[str] | None = None
    structured_outputs: FreeForm | None = None
    prompt_logprobs: Annotated[int, Field(ge=-1, le=_INT32_MAX)] | None = None
    truncate_prompt_tokens: Annotated[int, Field(ge=-1, le=2**63 - 1)] | None = None
    priority: Int64 | None = None
    request_id: str | None = None
    cache_salt: str | None = None
    echo: bool | None = None
    return_token_ids: bool | None = None
    return_tokens_as_token_ids: bool | None = None

    def answer_limit(self) -> int | None:
        """max_tokens per answer, as the client set it."""
        return self.max_tokens

    def reserved_tokens(self, when_unlimited: int) -> int:
        """What a tokens/min limit sets aside for the answers at admission, before the engine says what was used:
        `when_unlimited` per answer when the client set no max_tokens."""
        return (self.answer_limit() or when_unlimited) * self.choices()

    def choices(self) -> int:
        """How many answers the engine generates (and holds) for this request."""
        return self.n or 1

    def answers_per_prompt(self) -> int:
        return self.n or 1

    def logprob_fanout(self) -> int:
        """Alternatives per generated token that the answer carries."""
        return 0


# The parts of a message that every runtime reads. vLLM checks them itself, but llama.cpp's server answers a wrongly
# shaped message (a tool call without its type, a text part whose text is a number) with a 500 and closes the
# connection: checked here, so every runtime answers 400 naming the field.
class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str = Field(min_length=1)
    text: str | None = None

    @model_validator(mode="after")
    def _text_part_has_text(self) -> ContentPart:
        if self.type == "text" and self.text is None:
            raise ValueError("a part of type 'text' needs 'text', a string")
        return self


class ToolCallFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    type: Literal["function"]
    function: ToolCallFunction


class ToolFunction(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(min_length=1)


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: ToolFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1)
    content: str | list[str | ContentPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None
    reasoning_content: str | None = None


class ChatCompletionRequest(_GenerationRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: TokenCount | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: str | FreeForm | None = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None
    chat_template: str | None = None
    chat_template_kwargs: FreeForm | None = None
    mm_processor_kwargs: FreeForm | None = None
    documents: list[dict[str, str]] | None = None
    add_generation_prompt: bool | None = None
    continue_final_message: bool | None = None

    def prompt_text(self) -> str:
        return json.dumps([m.model_dump(exclude_none=True) for m in self.messages])[:4000]

    def non_text_parts(self) -> set[str]:
        """The types of the content parts that are not text (images, audio, files)."""
        return {part.type for m in self.messages if isinstance(m.content, list)
                for part in m.content if isinstance(part, ContentPart) and part.type != "text"}

    def answer_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprob_fanout(self) -> int:
        return (self.top_logprobs or 1) if self.logprobs else 0


class CompletionRequest(_GenerationRequest):
    prompt: str | list[str] | list[TokenId] | list[list[TokenId]]
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1, le=128)] | None = None
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    def choices(self) -> int:
        return self.answers_per_prompt() * self.prompts()

    def answers_per_prompt(self) -> int:
        return max(self.n or 1, self.best_of or 1)

    def prompts(self) -> int:
        """A list of strings or of token lists is a batch of prompts; a string or one token list is one."""
        return len(self.prompt) if self.prompt and isinstance(self.prompt, list) and \
            not isinstance(self.prompt[0], int) else 1

    def logprob_fanout(self) -> int:
        return self.logprobs or 0

    def prompt_text(self) -> str:
        return (self.prompt if isinstance(self.prompt, str) else json.dumps(self.prompt))[:4000]


T = TypeVar("T", ChatCompletionRequest, CompletionRequest)


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "quantserve"
    # quantserve's own fields (OpenAI clients keep unknown fields in `model_extra`): what the local engines run.
    # None for a model served only by external upstreams.
    runtime: str | None = None  # vllm, llama.cpp or openvino
    format: str | None = None  # full, w8a8-int8, w4a16-int4, bnb-nf4, bnb-int8, gguf-*, ov-*, other:...
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


MAX_JSON_DEPTH = 64  # deeper than any real request; past it, json and pydantic recurse toward Python's limit


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def _too_deep(value: object, limit: int) -> bool:
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def parse_body(raw: bytes, schema: type[T]) -> tuple[T, dict[str, Any]]:
    """The validated request and the decoded dict (what is forwarded, possibly amended)."""
    try:
        payload = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as err:
        raise OpenAIError(400, f"request body is not valid JSON: {err}", code="invalid_json") from None
    except RecursionError:
        raise OpenAIError(400, f"request body is nested more than {MAX_JSON_DEPTH} levels deep",
                          code="invalid_json") from None
    if not isinstance(payload, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
    if _too_deep(payload, MAX_JSON_DEPTH):
        raise OpenAIError(400, f"request body is nested more than {MAX_JSON_DEPTH} levels deep",
                          code="invalid_json")
    try:
        return schema.model_validate(payload), payload
    except ValidationError as err:
        raise OpenAIError(400, first_error(err), param=_deepest(err)[0], code="invalid_value") from None


def _deepest(err: ValidationError) -> tuple[str | None, str]:
    """The field path and message of the error that got furthest: for a union (`stop` as a string or a list of
    strings) that is the branch the client most likely meant."""
    first = max(err.errors(), key=lambda e: (len(e["loc"]), not e["type"].endswith("_type")))
    # a union names each branch it tried in the path ("str", "list[int]"): leave those out
    named = [str(p) for p in first["loc"] if isinstance(p, int) or not _is_type_name(str(p))]
    return ".".join(named) or None, first["msg"]


def _is_type_name(part: str) -> bool:
    return "[" in part or part in ("str", "int", "float", "bool", "dict", "list", "function-after")


def first_error(err: ValidationError) -> str:
    """One line a client can act on: the field and what is wrong with it."""
    param, message = _deepest(err)
    return f"{param or 'body'}: {message}"
