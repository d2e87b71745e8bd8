"""Bearer-key authentication for /v1/*: a verified key is trusted for a few seconds, then checked again, so a
revocation reaches every gateway replica within key_cache_ttl_s without a database query per request.

When the database cannot be reached, a key this gateway verified recently (within key_cache_ttl_s +
outage_key_grace_s) keeps working and any other key gets 503 `auth_unavailable` with Retry-After: an outage
neither locks out the traffic already flowing nor lets an unknown key in. The cost is that a key revoked during
the outage keeps working until its grace runs out; once the database answers again, its answer wins, and a key
it calls revoked leaves the cache, so a later outage cannot bring it back.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from sqlalchemy.exc import SQLAlchemyError

from quantserve.serve.db import first_line
from quantserve.serve.errors import OpenAIError
from quantserve.serve.keys import ApiKey, KeyStore, hash_key

log = logging.getLogger("quantserve.serve.auth")


class Authenticator:
    def __init__(
        self,
        store: KeyStore | None,
        enabled: bool,
        cache_ttl_s: float = 5.0,
        outage_grace_s: float = 300.0,
        retry_after_s: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if enabled and store is None:
            raise ValueError("authentication needs a key store")
        self.store = store
        self.enabled = enabled
        self.cache_ttl_s = cache_ttl_s
        self.outage_grace_s = outage_grace_s
        self.retry_after_s = retry_after_s
        self.clock = clock
        # by SHA-256, so no key sits in memory in clear; the value is the record and when the database last
        # confirmed it. Only verified keys enter, so the size is bounded by the number of live keys.
        self._cache: dict[str, tuple[ApiKey, float]] = {}
        # After a failed query the database is left alone this long: requests do not each wait out a timeout
        # (and hold a worker thread) during an outage.
        self._db_down_until = 0.0

    async def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The caller's key, None when auth is off; raises 401, or 503 when the key cannot be checked."""
        if not self.enabled:
            return None
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise OpenAIError(
                401,
                "missing API key: send the header 'Authorization: Bearer sk-qs-...' "
                "(create one with `quantserve keys create --name NAME`)",
                code="invalid_api_key",
            )
        digest = hash_key(token)
        now = self.clock()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] + self.cache_ttl_s > now:
            return cached[0]
        assert self.store is not None
        if now < self._db_down_until:
            return self._during_outage(digest, cached, now)
        try:
            key = await asyncio.to_thread(self.store.verify, token)
        except SQLAlchemyError as err:
            if self.clock() >= self._db_down_until:  # once per outage window, not once per request
                log.error("key check: the database did not answer (%s); for %d s only cached keys are "
                          "accepted", first_line(err), self.retry_after_s)
            self._db_down_until = self.clock() + self.retry_after_s
            return self._during_outage(digest, cached, self.clock())
        if key is None:
            self._cache.pop(digest, None)
            raise OpenAIError(401, "invalid or revoked API key", code="invalid_api_key")
        self._cache[digest] = (key, self.clock())
        return key

    def _during_outage(self, digest: str, cached: tuple[ApiKey, float] | None, now: float) -> ApiKey:
        if cached is not None and cached[1] + self.cache_ttl_s + self.outage_grace_s > now:
            return cached[0]
        if cached is not None:  # verified too long ago to vouch for it any more
            self._cache.pop(digest, None)
        raise OpenAIError(
            503,
            "the API key database is unreachable, so this key cannot be checked right now; retry shortly",
            code="auth_unavailable",
            headers={"Retry-After": str(self.retry_after_s)},
        )
