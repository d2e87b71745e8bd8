"""An engine SIGKILLed mid-stream: the client's stream ends with an error event, the gateway stays up, /ready
reports the model down until the supervisor has restarted the engine, then requests succeed again.
This test takes the session's only engine down; it leaves it restarted and ready (the `engine_back` fixture waits
for that even when the test fails), so the tests that share the engine may run before or after it."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

from tests.support.live_stack import LiveStack, wait_ready


@pytest.fixture
def engine_back(live: LiveStack) -> Iterator[None]:
    """Restore what the test breaks, passed or failed: the next test finds the engine restarted and ready. The
    supervisor's own restart brings it back: no engine is started here."""
    yield
    if not wait_ready(live.stack.base_url):
        pytest.fail(f"engine not back after 240 s; log tail:\n{live.stack.engine(live.model).log_tail()}")


def test_engine_killed_mid_stream(live, engine_back):
    engine = live.stack.engine(live.model)
    pgid = engine.pid
    assert pgid is not None
    restarts = engine.restarts  # other tests may have run before this one, on the same engine
    base = live.stack.base_url
    stream = live.client().chat.completions.create(
        model=live.model, messages=[{"role": "user", "content": "Write a long story."}], max_tokens=1500,
        stream=True, extra_body={"ignore_eos": True})
    received = 0
    with pytest.raises(openai.APIError) as err:
        for _chunk in stream:
            received += 1
            if received == 5:
                os.killpg(pgid, signal.SIGKILL)  # the whole engine: server and EngineCore
    assert received >= 5
    assert err.value.body["code"] == "upstream_error"  # type: ignore[index]

    assert httpx.get(f"{base}/health", trust_env=False).status_code == 200  # the gateway is fine
    ready = httpx.get(f"{base}/ready", trust_env=False)
    assert ready.status_code == 503 and not ready.json()["models"][live.model]["ready"]
    with pytest.raises(openai.APIStatusError) as down:
        live.client().chat.completions.create(model=live.model, messages=[{"role": "user", "content": "hi"}])
    assert down.value.status_code == 503

    if not wait_ready(base, timeout=240):
        pytest.fail(f"engine not back after 240 s; log tail:\n{engine.log_tail()}")
    assert engine.restarts == restarts + 1 and engine.pid != pgid

    reply = live.client().chat.completions.create(model=live.model, max_tokens=8,
                                                  messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content

    db = create_engine(live.db_url)
    with db.connect() as conn:
        statuses = [row[0] for row in conn.execute(text("SELECT status FROM qs_usage ORDER BY id"))]
    db.dispose()
    assert 502 in statuses  # the broken stream is in the ledger, with what it had consumed
