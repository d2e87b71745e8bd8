"""The gateway's database: API keys and the usage ledger. SQLite by default; any SQLAlchemy URL (PostgreSQL)
to share one.

Several gateway replicas pointed at one PostgreSQL URL share keys and ledger; that is the multi-machine setup.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    make_url,
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from quantserve.serve.config import DatabaseSettings

metadata = MetaData()

api_keys = Table(
    "qs_api_keys",
    metadata,
    Column("id", String(32), primary_key=True),  # public id, e.g. key_3f9a1c2b
    Column("name", String(128), nullable=False, unique=True),
    Column("prefix", String(16), nullable=False, index=True),  # the key's first characters: lookup, display
    Column("key_hash", String(64), nullable=False),  # SHA-256 hex of the whole key; the key is never stored
    Column("rpm", Integer, nullable=True),
    Column("tpm", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("revoked_at", Float, nullable=True),
)

usage = Table(
    "qs_usage",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),  # unix seconds when the request arrived
    Column("key_id", String(32), nullable=True),  # None under --no-auth
    Column("model", String(200), nullable=False),
    Column("endpoint", String(64), nullable=False),
    Column("stream", Boolean, nullable=False, default=False),
    Column("status", Integer, nullable=False),  # HTTP status; 499 = client went away
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("ttft_ms", Float, nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("gateway", String(128), nullable=False, default=""),
)
Index("ix_qs_usage_ts_key_model", usage.c.ts, usage.c.key_id, usage.c.model)


def get_engine(url: str, settings: DatabaseSettings | None = None) -> Engine:
    """One pooled engine per URL and settings per process, with the tables in place. No settings: the
    defaults, the same engine as DatabaseSettings()."""
    return _engine(url, settings or DatabaseSettings())


@functools.cache
def _engine(url: str, settings: DatabaseSettings) -> Engine:
    engine = create_engine(url, **engine_options(url, settings))
    if url.startswith("sqlite"):
        busy_ms = int(settings.sqlite_busy_timeout_s * 1000)
        event.listen(engine, "connect", functools.partial(_sqlite_pragmas, busy_ms=busy_ms))
    _create_tables(engine)
    return engine


def engine_options(url: str, settings: DatabaseSettings) -> dict[str, Any]:
    """create_engine() arguments that bound how long any database call can hang."""
    if url.startswith("sqlite"):
        return {"connect_args": {"check_same_thread": False, "timeout": settings.sqlite_busy_timeout_s}}
    options: dict[str, Any] = {
        "pool_pre_ping": True,
        "pool_size": 5,
        "max_overflow": 10,
        # A full pool is a symptom of a database that stopped answering: fail like it rather than queue.
        "pool_timeout": settings.connect_timeout_s + settings.statement_timeout_s,
    }
    if make_url(url).get_driver_name() in ("psycopg2", "psycopg"):  # libpq's parameters
        connect_args: dict[str, Any] = {
            "connect_timeout": max(2, math.ceil(settings.connect_timeout_s)),
            # statement_timeout is enforced by a server that still answers; keepalives end a query whose
            # server vanished (host down, network cut) in about idle + 3 probes instead of TCP's minutes.
            "keepalives": 1,
            "keepalives_idle": max(1, math.ceil(settings.statement_timeout_s or 30)),
            "keepalives_interval": 1,
            "keepalives_count": 3,
        }
        if settings.statement_timeout_s > 0:
            connect_args["options"] = f"-c statement_timeout={int(settings.statement_timeout_s * 1000)}"
        options["connect_args"] = connect_args
    return options


def _sqlite_pragmas(dbapi_conn: object, _record: object, busy_ms: int) -> None:
    # WAL lets `quantserve keys create` and `usage` run while the gateway writes.
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process crash; fsync per checkpoint
    cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
    cursor.close()


def first_line(err: BaseException) -> str:
    """An error's first line, for a log line: SQLAlchemy's messages go on with the SQL and a link."""
    return (str(err).splitlines() or [repr(err)])[0]


def _create_tables(engine: Engine) -> None:
    # Two replicas starting at once against a fresh PostgreSQL race on CREATE TABLE; the loser retries and
    # then finds the tables there.
    for attempt in range(5):
        try:
            metadata.create_all(engine, checkfirst=True)
            return
        except (IntegrityError, ProgrammingError, OperationalError):
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
