"""The gateway's HTTP surface: OpenAI endpoints under /v1, plus /health, /ready and /metrics without an API key
(/metrics takes its own token when `metrics_token` is set)."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from quantserve.serve.errors import OpenAIError
from quantserve.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from quantserve.serve.runtime import GatewayRuntime

router = APIRouter()

# What /openapi.json (docs: true) says every generation and model route may answer instead of success.
ERRORS = {status: {"model": ErrorResponse, "description": text} for status, text in (
    (400, "invalid request: the field is named in error.param"), (401, "missing, invalid or revoked API key"),
    (404, "model not served here"), (413, "body over max_body_bytes"),
    (429, "rate limit or overload; see Retry-After"), (502, "the engine failed to answer"),
    (503, "no engine for the model, or the key database unreachable; see Retry-After"),
    (504, "the engine did not answer in time"),
)}


def runtime(request: Request) -> GatewayRuntime:
    return request.app.state.runtime


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request, model: str | None = None) -> JSONResponse:
    """200 while at least one model can take requests and usage rows can be stored, so one engine rolling or
    crashing takes no gateway out of a load balancer; `?model=NAME` answers for that model alone (404 for a model
    not served here)."""
    pools = runtime(request).pools
    if model is not None and model not in pools:
        raise OpenAIError(404, f"The model '{model[:200]}' does not exist here", type="invalid_request_error",
                          param="model", code="model_not_found")
    models = {
        name: {
            "ready": pool.ready(),
            "healthy_upstreams": sum(1 for u in pool.upstreams if u.healthy),
            "upstreams": len(pool.upstreams),
            "in_flight": pool.in_flight(),
        }
        for name, pool in pools.items()
        if model is None or name == model
    }
    ledger = runtime(request).ledger.health()
    # a gateway that can store no usage row (database away and disk full) would serve unbilled traffic
    is_ready = any(m["ready"] for m in models.values()) and bool(ledger["storing"])
    return JSONResponse({"status": "ready" if is_ready else "not_ready", "models": models, "ledger": ledger},
                        status_code=200 if is_ready else 503)


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    rt = runtime(request)
    token = rt.config.metrics_token
    if token is not None:
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise OpenAIError(401, "GET /metrics needs 'Authorization: Bearer <metrics_token>'",
                              code="invalid_metrics_token", headers={"WWW-Authenticate": "Bearer"})
    rt.metrics.observe_ledger(rt.ledger.health())
    return Response(rt.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=ModelList, responses=ERRORS)
async def list_models(request: Request) -> ModelList:
    rt = runtime(request)
    await rt.authenticator.authenticate(request.headers.get("authorization"))
    return ModelList(data=[ModelCard(id=name, created=rt.created, **rt.model_info.get(name, {}))
                           for name in rt.pools])


@router.get("/v1/models/{model:path}", response_model=ModelCard, responses=ERRORS)
async def get_model(model: str, request: Request) -> ModelCard:
    rt = runtime(request)
    await rt.authenticator.authenticate(request.headers.get("authorization"))
    if model not in rt.pools:
        raise OpenAIError(404, f"The model '{model[:200]}' does not exist here", type="invalid_request_error",
                          param="model", code="model_not_found")
    return ModelCard(id=model, created=rt.created, **rt.model_info.get(model, {}))


@router.post("/v1/chat/completions", responses=ERRORS)
async def create_chat_completion(request: Request) -> Response:
    return await runtime(request).proxy.handle(request, "/v1/chat/completions", ChatCompletionRequest)


@router.post("/v1/completions", responses=ERRORS)
async def create_completion(request: Request) -> Response:
    return await runtime(request).proxy.handle(request, "/v1/completions", CompletionRequest)
