"""serve.yaml: one file for the gateway, the engines and the models, with QUANTSERVE_* env overrides.

Precedence, highest first: command-line flags, environment (QUANTSERVE_PORT, QUANTSERVE_ENGINE__MAX_MODEL_LEN,
...), the YAML file, the defaults below. See serve/serve.example.yaml for every field.
"""

from __future__ import annotations

import socket
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from quantserve.errors import UserError, first_validation_error
from quantserve.paths import state_dir

EXAMPLE_CONFIG = Path(__file__).resolve().parent / "serve.example.yaml"

# settings_customise_sources is a classmethod with no per-call argument, so the YAML path travels here.
_YAML_FILE: ContextVar[Path | None] = ContextVar("quantserve_serve_yaml", default=None)


class EngineSettings(BaseModel):
    """How local vLLM servers are started and supervised."""

    model_config = {"extra": "forbid"}

    device: Literal["auto", "cpu", "cuda"] = "auto"
    host: str = "127.0.0.1"  # engines stay on loopback: only the gateway is meant to reach them
    port_base: int = 8100  # first port tried; taken ports are skipped
    dtype: str | None = None  # None: per checkpoint format, the fastest dtype `quantserve probe` measured here
    max_model_len: int = 2048
    enforce_eager: bool | None = None  # None: on for CPU, off for CUDA
    tensor_parallel_size: int = 1
    replicas: int = 1  # vLLM servers per model; the gateway round-robins among the healthy ones
    kv_cache_space_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE, CPU only
    gpu_memory_utilization: float | None = None  # CUDA only; set it when several engines share a GPU
    extra_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    startup_timeout_s: float = 600.0
    stop_timeout_s: float = 15.0
    restart_backoff_s: float = 1.0
    restart_backoff_max_s: float = 60.0
    healthy_reset_s: float = 120.0  # an engine up this long since its last crash restarts fast again
    smoke_test: bool = True  # generate one token before an engine counts as up (catches first-forward crashes)
    # llama.cpp and OpenVINO engines: requests decoded together (llama.cpp's slots, each with max_model_len of
    # KV cache; OpenVINO's max_num_seqs), and compute threads (None: every core, as the probe measured them)
    parallel_slots: int = Field(default=16, ge=1)
    threads: int | None = Field(default=None, ge=1)


class ModelSpec(BaseModel):
    """A model named in serve.yaml: a local folder to start engines for, external servers, or both."""

    model_config = {"extra": "forbid"}

    name: str
    path: str | None = None  # HF folder, variant folder or HF id that local engines load
    upstreams: list[str] = Field(default_factory=list)  # running OpenAI servers, e.g. http://10.0.0.5:8000
    replicas: int | None = None
    tensor_parallel_size: int | None = None
    extra_args: list[str] = Field(default_factory=list)

    @field_validator("upstreams")
    @classmethod
    def _strip_slash(cls, urls: list[str]) -> list[str]:
        return [url.rstrip("/").removesuffix("/v1") for url in urls]


class OverloadSettings(BaseModel):
    """Admission per upstream: this many requests run, this many wait, the rest get 429 at once."""

    model_config = {"extra": "forbid"}

    max_in_flight_per_upstream: int = 64
    max_queue_per_upstream: int = 128
    queue_timeout_s: float = 30.0


class LedgerSettings(BaseModel):
    model_config = {"extra": "forbid"}

    batch_size: int = 200
    flush_interval_s: float = 0.25  # rows reach the database this long after their request, at most
    # Rows waiting in memory for the writer; past this (the database is slower than the traffic) they go to the
    # spill file, so an outage costs disk, not the gateway's memory.
    max_queue: int = Field(default=10_000, ge=1)
    # After a failed write, rows go straight to the spill file for this long instead of each batch waiting out
    # a timeout; the spill file is replayed into the database this often.
    retry_interval_s: float = Field(default=5.0, gt=0)


class DatabaseSettings(BaseModel):
    """Timeouts for the keys/ledger database and what the gateway does while it cannot reach it."""

    model_config = {"extra": "forbid", "frozen": True}  # frozen: hashable, part of the engine cache key

    # PostgreSQL (libpq drivers): a host that does not answer fails a connection in this long, not after the
    # kernel's TCP timeout of minutes. libpq counts whole seconds, at least 2.
    connect_timeout_s: float = Field(default=3.0, gt=0)
    statement_timeout_s: float = Field(default=5.0, ge=0)  # PostgreSQL's statement_timeout; 0: no limit
    sqlite_busy_timeout_s: float = Field(default=5.0, ge=0)  # how long SQLite waits on another writer's lock
    # While the database cannot be reached, a key verified within key_cache_ttl_s + this many seconds keeps
    # working; keys not in that cache get 503. A key revoked during an outage works until this runs out.
    outage_key_grace_s: float = Field(default=300.0, ge=0)
    # Retry-After on that 503; also how long a gateway waits before asking the database again after a failure.
    outage_retry_after_s: int = Field(default=5, ge=1)


class ServeConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="QUANTSERVE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    host: str = "127.0.0.1"
    port: int = 8000
    auth: bool = True
    database_url: str | None = None  # None: SQLite file under state_dir(); postgresql://... to share it
    log_prompts: bool = False
    log_level: str = "info"
    access_log: bool = False  # our own one-line request log replaces uvicorn's
    # uvicorn's event loop and HTTP parser; "auto" takes uvloop and httptools when installed (`make bench`
    # measures both pairs: bench/serve.json "gateway_overhead")
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    http: Literal["auto", "h11", "httptools"] = "auto"
    max_body_bytes: int = 1_048_576
    upstream_timeout_s: float = 600.0  # longest silence allowed between two bytes from an engine
    health_interval_s: float = Field(default=1.0, gt=0)
    # a /health that times out may be a busy engine (OpenVINO's step and vLLM's scheduler hold the GIL a while
    # under load), so only this many timeouts in a row take it out; a refused connection or a non-200 does at once
    health_timeout_s: float = Field(default=5.0, gt=0)
    health_timeouts_down: int = Field(default=3, ge=1)
    key_cache_ttl_s: float = 5.0  # how long a verified key is trusted before the database is asked again
    default_rpm: int | None = None  # for keys created without --rpm; None: unlimited
    default_tpm: int | None = None
    # tokens/min admission sets aside the prompt (estimated) plus max_tokens per answer; when max_tokens is absent,
    # this many, or None: what the engine may actually generate (engine.max_model_len less the prompt)
    reserve_tokens_default: int | None = Field(default=None, ge=1)
    # Answers a request may ask for: n x best_of x prompts in a list (each is generated and held in full), and
    # those answers times top_logprobs (each token of each answer carries that many alternatives in the body)
    max_choices: int = Field(default=16, ge=1)
    max_logprob_fanout: int = Field(default=80, ge=1)
    # a non-streamed answer larger than this is not buffered: 502 answer_too_large (stream it instead)
    max_answer_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # a stream whose client reads nothing for this long is ended and its engine slot freed
    stall_timeout_s: float = Field(default=30.0, gt=0)
    request_timeout_s: float = Field(default=1800.0, gt=0)  # the longest one request may take, end to end
    max_in_flight_per_key: int | None = Field(default=64, ge=1)  # per gateway process; None: no cap
    # vLLM's prefix cache is shared: a per-key cache_salt keeps one tenant from timing another's cached prompts
    cache_salt_per_key: bool = True
    # pooled engine connections idle this long are closed by the gateway first, before the engine's own
    # keep-alive (uvicorn: 5 s) closes them under a request in flight
    upstream_keepalive_s: float = Field(default=2.0, gt=0)
    docs: bool = False  # /docs, /redoc and /openapi.json: off, so a public gateway does not publish its surface
    metrics_token: str | None = Field(default=None, repr=False)  # set: GET /metrics needs "Bearer <token>"
    # sent as "Bearer <key>" to every upstream; local engines get it as VLLM_API_KEY. None: a stack that starts
    # engines generates one, so only its gateway can reach them.
    upstream_api_key: str | None = Field(default=None, repr=False)
    gateway_id: str = Field(default_factory=socket.gethostname)  # written on each ledger row
    variants_dir: Path | None = None
    model_refs: list[str] = Field(default_factory=list)  # --model values: folders, variant names, HF ids
    host_sources: bool = True  # a hosted variant brings its source along, as the quality and speed baseline
    models: list[ModelSpec] = Field(default_factory=list)
    engine: EngineSettings = Field(default_factory=EngineSettings)
    overload: OverloadSettings = Field(default_factory=OverloadSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = _YAML_FILE.get()
        if path is not None:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=path))
        return tuple(sources)

    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{state_dir() / 'serve.db'}"


def load_config(path: Path | None = None, **overrides: Any) -> ServeConfig:
    """Read `path` (if any) under env overrides; `overrides` are command-line values and win over both.

    An override of None means "flag not given" and is dropped so the file or env value stays.
    """
    given = {key: value for key, value in overrides.items() if value is not None}
    if path is not None:
        _check_yaml(path)
    token = _YAML_FILE.set(path)
    try:
        return ServeConfig(**given)
    except ValidationError as err:
        origin = f"{path}: " if path else ""
        raise UserError(f"serve config {origin}{first_validation_error(err, root='config')}") from None
    finally:
        _YAML_FILE.reset(token)


def _check_yaml(path: Path) -> None:
    # YamlConfigSettingsSource would report these as a traceback; the user gets one line instead.
    if not path.is_file():
        raise UserError(f"serve config not found: {path} (see {EXAMPLE_CONFIG} for a starting point)")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise UserError(f"serve config {path} is not valid YAML: {err}".replace("\n", " ")) from None
    if raw is not None and not isinstance(raw, dict):
        raise UserError(f"serve config {path} must be a mapping of settings")


def build_config(
    variants_dir: Path | None = None,
    model_path: str | Path | None = None,
    no_auth: bool = False,
    port: int | None = None,
    config_file: Path | None = None,
    **overrides: Any,
) -> ServeConfig:
    """The config `quantserve serve` builds from its flags, for Python callers such as `quantserve run`."""
    return load_config(
        config_file,
        variants_dir=variants_dir,
        model_refs=[str(model_path)] if model_path is not None else None,
        auth=False if no_auth else None,
        port=port,
        **overrides,
    )
