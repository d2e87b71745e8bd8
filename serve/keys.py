"""API keys: created once and shown once, stored only as SHA-256, checked in constant time, revocable."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from sqlalchemy import or_, select, update
from sqlalchemy.exc import IntegrityError

from quantserve.errors import UserError
from quantserve.serve.config import DatabaseSettings
from quantserve.serve.db import api_keys, get_engine

KEY_PREFIX = "sk-qs-"
_LOOKUP_CHARS = len(KEY_PREFIX) + 6  # stored in clear: narrows the lookup, reveals 36 bits of 256


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    prefix: str
    rpm: int | None
    tpm: int | None
    created_at: float
    revoked_at: float | None

    @property
    def revoked(self) -> bool:
        return self.revoked_at is not None


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    # A plain SHA-256 is enough: the key carries 256 random bits, so there is nothing to brute-force that a
    # slow password hash would protect.
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, database_url: str, settings: DatabaseSettings | None = None) -> None:
        self.engine = get_engine(database_url, settings)

    def create(self, name: str, rpm: int | None = None, tpm: int | None = None) -> tuple[ApiKey, str]:
        """Returns the record and the key itself, which is not recoverable afterwards."""
        if not name.strip():
            raise UserError("a key needs a non-empty --name")
        for limit, flag in ((rpm, "--rpm"), (tpm, "--tpm")):
            if limit is not None and limit <= 0:
                raise UserError(f"{flag} must be a positive number (leave it out for no limit)")
        key = generate_key()
        row = {
            "id": "key_" + secrets.token_hex(4),
            "name": name,
            "prefix": key[:_LOOKUP_CHARS],
            "key_hash": hash_key(key),
            "rpm": rpm,
            "tpm": tpm,
            "created_at": time.time(),
            "revoked_at": None,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(api_keys.insert().values(**row))
        except IntegrityError:
            raise UserError(f"a key named '{name}' already exists; pick another name or revoke it") from None
        row.pop("key_hash")
        return ApiKey(**row), key

    def list(self) -> list[ApiKey]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).mappings().all()
        return [_to_key(row) for row in rows]

    def revoke(self, name_or_id: str) -> ApiKey:
        now = time.time()
        match = or_(api_keys.c.name == name_or_id, api_keys.c.id == name_or_id)
        with self.engine.begin() as conn:
            row = conn.execute(select(api_keys).where(match)).mappings().first()
            if row is None:
                raise UserError(f"no key named or with id '{name_or_id}' (see `quantserve keys list`)")
            if row["revoked_at"] is None:
                conn.execute(update(api_keys).where(api_keys.c.id == row["id"]).values(revoked_at=now))
        return _to_key({**row, "revoked_at": row["revoked_at"] or now})

    def verify(self, key: str) -> ApiKey | None:
        """The key's record if it exists and is not revoked, else None; raises SQLAlchemyError when the
        database cannot answer (the caller tells that apart from a wrong key)."""
        if not key.startswith(KEY_PREFIX) or len(key) < _LOOKUP_CHARS:
            return None
        presented = hash_key(key)
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(api_keys).where(api_keys.c.prefix == key[:_LOOKUP_CHARS])
            ).mappings().all()
        found = None
        for row in rows:  # compare against every candidate so timing does not tell which one matched
            if hmac.compare_digest(presented, row["key_hash"]):
                found = row
        if found is None or found["revoked_at"] is not None:
            return None
        return _to_key(found)


def _to_key(row: object) -> ApiKey:
    data = dict(row)  # type: ignore[call-overload]
    data.pop("key_hash", None)
    return ApiKey(**data)
