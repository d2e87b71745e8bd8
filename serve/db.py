"""The gateway's database: API keys and the usage ledger. SQLite by default; any SQLAlchemy URL (PostgreSQL)
to share one.

Several gateway replicas pointed at one PostgreSQL URL share keys and ledger; that is the multi-machine setup.
"""

from __future__ import annotations

import functools
import time

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
)
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

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


@functools.cache
def get_engine(url: str) -> Engine:
    """One pooled engine per URL per process, with the tables in place."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)
    _create_tables(engine)
    return engine


def _sqlite_pragmas(dbapi_conn: object, _record: object) -> None:
    # WAL lets `quantserve keys create` and `usage` run while the gateway writes.
    cursor = dbapi_conn.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL survives a process crash; fsync per checkpoint
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


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
