"""An engine SIGKILLed mid-stream: the client's stream ends with an error event, the gateway stays up, /ready
reports the model down until the supervisor has restarted the engine, then requests succeed again.
The file name sorts last: this test takes the session's only engine down."""

from __future__ import annotations

import os
import signal
import time

import httpx
import openai
import pytest
from sqlalchemy import create_engine, text

pytestmark = pytest.mark.serve


def test_engine_killed_mid_stream(live):
    engine = live.stack.engine(live.model)
    pgid = engine.pid
    assert pgid is not None
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

    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if httpx.get(f"{base}/ready", trust_env=False).status_code == 200:
            break
        time.sleep(1)
    else:
        pytest.fail(f"engine not back after 240 s; log tail:\n{engine.log_tail()}")
    assert engine.restarts == 1 and engine.pid != pgid

    reply = live.client().chat.completions.create(model=live.model, max_tokens=8,
                                                  messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content

    db = create_engine(live.db_url)
    with db.connect() as conn:
        statuses = [row[0] for row in conn.execute(text("SELECT status FROM qs_usage ORDER BY id"))]
    db.dispose()
    assert 502 in statuses  # the broken stream is in the ledger, with what it had consumed
