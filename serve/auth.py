"""Bearer-key authentication for /v1/*: a verified key is trusted for a few seconds, then checked again, so a
revocation reaches every gateway replica within key_cache_ttl_s without a database query per request."""

from __future__ import annotations

import asyncio
import time

from quantserve.serve.errors import OpenAIError
from quantserve.serve.keys import ApiKey, KeyStore, hash_key


class Authenticator:
    def __init__(self, store: KeyStore | None, enabled: bool, cache_ttl_s: float = 5.0) -> None:
        if enabled and store is None:
            raise ValueError("authentication needs a key store")
        self.store = store
        self.enabled = enabled
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[ApiKey, float]] = {}  # by SHA-256, so no key sits in memory in clear

    async def authenticate(self, authorization: str | None) -> ApiKey | None:
        """The caller's key, None when auth is off; raises 401 otherwise."""
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
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[1] > now:
            return cached[0]
        assert self.store is not None
        key = await asyncio.to_thread(self.store.verify, token)
        if key is None:
            self._cache.pop(digest, None)
            raise OpenAIError(401, "invalid or revoked API key", code="invalid_api_key")
        self._cache[digest] = (key, now + self.cache_ttl_s)
        return key
