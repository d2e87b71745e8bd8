"""Hostile bodies against the real engine behind the gateway: no client mistake gets a 5xx, every 4xx is an
OpenAI error body, the engine is never marked down, and a normal request works afterwards.

Before the gateway checked what it forwards, 102 of 300 such bodies got a 5xx: vLLM answered some with a bare
500 and closed the connection, the next request on it failed, and the model was marked down for everyone.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.serve_fuzz import FuzzCase, cases

SEED = 20261201
COUNT = 320


def _error_events(body: str) -> list[dict]:
    events = []
    for line in body.splitlines():
        if line.startswith("data: ") and '"error"' in line:
            try:
                payload = json.loads(line[6:])
            except ValueError:
                continue
            events.append(payload.get("error", payload) if isinstance(payload, dict) else {})
    return events


def test_hostile_bodies_get_4xx_and_never_take_the_engine_down(live):
    fuzz = cases(SEED, COUNT, live.model)
    assert sum(c.endpoint == "/v1/chat/completions" for c in fuzz) > 100
    assert sum(c.endpoint == "/v1/completions" for c in fuzz) > 100
    assert sum(c.stream for c in fuzz) > 50
    down_seen: list[dict] = []
    stop = threading.Event()

    def watch_readiness() -> None:
        with live.http() as http:
            while not stop.is_set():
                models = http.get("/ready").json()["models"]
                if models[live.model]["healthy_upstreams"] < 1:
                    down_seen.append(models)
                time.sleep(0.05)

    watcher = threading.Thread(target=watch_readiness)
    watcher.start()
    failures: list[str] = []
    statuses: Counter[int] = Counter()
    try:
        with live.http() as http:
            def send(case: FuzzCase) -> tuple[FuzzCase, httpx.Response]:
                return case, http.post(case.endpoint, content=case.body, headers={"content-type": case.content_type})

            with ThreadPoolExecutor(8) as pool:
                for case, reply in pool.map(send, fuzz):
                    statuses[reply.status_code] += 1
                    where = f"{case.endpoint} [{case.what}] -> {reply.status_code}: {reply.text[:200]}"
                    if reply.status_code >= 500:
                        failures.append(where)
                    elif reply.status_code >= 400:
                        error = reply.json().get("error")
                        if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
                            failures.append(f"not an OpenAI error body: {where}")
                    elif case.stream:
                        failures += [f"error event >= 500 mid-stream: {where}" for e in _error_events(reply.text)
                                     if isinstance(e.get("code"), int) and e["code"] >= 500]
    finally:
        stop.set()
        watcher.join()
    print(f"\nfuzz: {COUNT} bodies, statuses {dict(sorted(statuses.items()))}")
    assert not failures, "\n".join(failures[:20])
    assert not down_seen, f"the engine was marked down during the fuzz: {down_seen[0]}"
    assert statuses[400] > 100 and statuses[200] > 20  # the fuzz reached both the checks and the engine
    reply = live.client().chat.completions.create(model=live.model, max_tokens=4,
                                                  messages=[{"role": "user", "content": "Say hi."}])
    assert reply.usage.completion_tokens >= 1
