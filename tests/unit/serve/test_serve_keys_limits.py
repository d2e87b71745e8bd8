"""API keys (hashing, verify, revoke) and the per-key limits."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import create_engine, text

from quantserve.errors import UserError
from quantserve.serve.auth import Authenticator
from quantserve.serve.errors import OpenAIError
from quantserve.serve.keys import KEY_PREFIX, KeyStore, hash_key
from quantserve.serve.limits import RateLimiter


@pytest.fixture
def store(tmp_path):
    return KeyStore(f"sqlite:///{tmp_path / 'keys.db'}")


def test_key_is_shown_once_and_stored_hashed(store, tmp_path):
    record, key = store.create("team-a", rpm=60, tpm=100_000)
    assert key.startswith(KEY_PREFIX) and len(key) > 40
    assert (record.name, record.rpm, record.tpm, record.revoked) == ("team-a", 60, 100_000, False)
    engine = create_engine(f"sqlite:///{tmp_path / 'keys.db'}")
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT * FROM qs_api_keys")).mappings().one()
    assert stored["key_hash"] == hashlib.sha256(key.encode()).hexdigest() == hash_key(key)
    assert key not in [str(v) for v in stored.values()]  # only a prefix of it, for lookup
    assert key.startswith(stored["prefix"]) and len(stored["prefix"]) < 16


def test_verify_accepts_only_the_exact_key(store):
    record, key = store.create("team-a")
    assert store.verify(key) == record
    assert store.verify(key[:-1] + ("A" if key[-1] != "A" else "B")) is None
    assert store.verify(key + "x") is None
    assert store.verify("sk-other") is None
    assert store.verify("") is None


def test_revoke_by_name_or_id(store):
    _a, key_a = store.create("a")
    b, key_b = store.create("b")
    assert store.revoke("a").revoked
    assert store.verify(key_a) is None
    store.revoke(b.id)
    assert store.verify(key_b) is None
    assert [k.revoked for k in store.list()] == [True, True]
    with pytest.raises(UserError, match="no key named"):
        store.revoke("nobody")


def test_duplicate_name_and_bad_limits_are_user_errors(store):
    store.create("a")
    with pytest.raises(UserError, match="already exists"):
        store.create("a")
    with pytest.raises(UserError, match="--rpm"):
        store.create("b", rpm=0)


async def test_authenticator_caches_then_sees_revocation(store):
    _, key = store.create("a")
    auth = Authenticator(store, enabled=True, cache_ttl_s=0.0)  # no caching: every call asks the database
    assert (await auth.authenticate(f"Bearer {key}")).name == "a"
    store.revoke("a")
    with pytest.raises(OpenAIError) as err:
        await auth.authenticate(f"Bearer {key}")
    assert err.value.status == 401
    for header in (None, "", "Basic abc", "Bearer "):
        with pytest.raises(OpenAIError):
            await auth.authenticate(header)
    assert await Authenticator(None, enabled=False).authenticate(None) is None


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rpm_window_and_retry_after():
    clock = Clock()
    limiter = RateLimiter(clock)
    for _ in range(3):
        assert limiter.admit("k", rpm=3, tpm=None) is None
        clock.now += 10
    refused = limiter.admit("k", rpm=3, tpm=None)
    assert refused is not None and refused.limit == "requests"
    assert refused.retry_after_s == 30  # the first request leaves the window 60 s after it came, at t=1060
    clock.now = 1060.5
    assert limiter.admit("k", rpm=3, tpm=None) is None
    assert limiter.admit("other", rpm=3, tpm=None) is None  # keys do not share a window


def test_tpm_reserves_at_admission_and_settles_at_finish():
    clock = Clock()
    limiter = RateLimiter(clock)
    assert limiter.admit("k", rpm=None, tpm=100, reserve=60) is None
    # a second request while the first is in flight: 60 reserved + 50 > 100, so it waits (it used to pass and
    # overshoot, because tokens were only charged when a request finished)
    refused = limiter.admit("k", rpm=None, tpm=100, reserve=50)
    assert refused is not None and refused.limit == "tokens"
    assert refused.retry_after_s == 1  # held by a request in flight: it settles when that one ends
    limiter.settle("k", reserved=60, used=30, tpm=100)  # the first one used less than it reserved
    clock.now += 5
    assert limiter.admit("k", rpm=None, tpm=100, reserve=50) is None  # 30 used + 50 reserved <= 100
    limiter.settle("k", reserved=50, used=50, tpm=100)
    refused = limiter.admit("k", rpm=None, tpm=100, reserve=40)  # 80 used + 40 > 100
    assert refused is not None and refused.retry_after_s == 55  # the first 30 tokens leave the window at t=1060
    clock.now = 1061
    assert limiter.admit("k", rpm=None, tpm=100, reserve=40) is None


def test_a_request_larger_than_the_tpm_limit_is_refused_without_retry_after():
    limiter = RateLimiter(Clock())
    refused = limiter.admit("k", rpm=None, tpm=100, reserve=101)
    assert refused is not None and refused.retry_after_s is None
    assert "lower max_tokens" in refused.message(100)


def test_concurrent_admissions_never_exceed_the_budget():
    limiter = RateLimiter(Clock())
    admitted = sum(limiter.admit("k", rpm=None, tpm=1000, reserve=64) is None for _ in range(100))
    assert admitted == 1000 // 64


def test_unlimited_keys_keep_no_history():
    limiter = RateLimiter(Clock())
    for _ in range(1000):
        assert limiter.admit("k", rpm=None, tpm=None) is None
        limiter.settle("k", reserved=0, used=10, tpm=None)
    assert limiter._windows == {}
