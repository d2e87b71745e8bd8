"""One owner for a request's accounting: however a generation request ends (an answer, a stream run to its end or
cut short, an engine error, a bad body, an unknown model, a client that leaves, a bug in the gateway), it is
counted once in the metrics and, once its key is known, written once to the ledger, with the status the client
got."""

from __future__ import annotations

import contextlib
import logging
import re

import httpx
import pytest

from tests.support.serve_helpers import FAKE_MODEL, chat_body, ledger_rows, wait_until


def _requests_counted(client: httpx.Client) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in client.get("/metrics").text.splitlines():
        found = re.match(r'quantserve_requests_total\{.*endpoint="/v1/chat/completions".*status="(\d+)"\} (\S+)', line)
        if found:
            counts[found[1]] = counts.get(found[1], 0) + float(found[2])
    return counts


def test_every_ending_is_counted_once_with_the_status_the_client_got(make_gateway, caplog):
    caplog.set_level("INFO", logger="quantserve.serve")
    gw = make_gateway()
    got: list[int] = []
    with gw.client() as client:
        got.append(client.post("/v1/chat/completions", json=chat_body()).status_code)  # 200
        with client.stream("POST", "/v1/chat/completions", json=chat_body(stream=True)) as reply:
            reply.read()
            got.append(reply.status_code)  # 200, streamed to the end
        got.append(client.post("/v1/chat/completions", json=chat_body("BOOM")).status_code)  # 502
        got.append(client.post("/v1/chat/completions", json=chat_body("TOO_LONG")).status_code)  # 400
        got.append(client.post("/v1/chat/completions", json={**chat_body(), "model": "missing"}).status_code)
        got.append(client.post("/v1/chat/completions", content=b"{not json").status_code)  # 400
        with client.stream("POST", "/v1/chat/completions", json=chat_body("SLOW", stream=True)) as reply:
            for line in reply.iter_lines():
                if line.startswith("data: {"):
                    break  # the client cuts the stream short: 499
        got.append(499)
    with gw.client(timeout=0.3) as impatient, contextlib.suppress(httpx.ReadTimeout):
        impatient.post("/v1/chat/completions", json=chat_body("SLOW"))  # leaves while the answer is made: 499
    got.append(499)
    with gw.client(key="sk-not-a-key") as stranger:
        assert stranger.post("/v1/chat/completions", json=chat_body()).status_code == 401
    assert got == [200, 200, 502, 400, 404, 400, 499, 499]

    pool = gw.runtime.pools[FAKE_MODEL]
    assert wait_until(lambda: pool.in_flight() == 0)
    with gw.client() as client:
        assert wait_until(lambda: sum(_requests_counted(client).values()) == len(got) + 1, 3.0), \
            _requests_counted(client)
        assert _requests_counted(client) == {"200": 2, "502": 1, "400": 2, "404": 1, "499": 2, "401": 1}
    gw.thread.stop()
    rows = ledger_rows(gw.db_url)  # the 401 has no key to bill: metered, not in the ledger
    assert sorted(r["status"] for r in rows) == sorted(got)
    assert not [r for r in caplog.records if "finished twice" in r.getMessage()]


def test_a_bug_in_the_gateway_is_a_plain_500_and_still_billed_once(make_gateway, monkeypatch: pytest.MonkeyPatch,
                                                                 caplog):
    # A fault that cannot be caused for real without a bug: the unary path is replaced by one that raises.
    gw = make_gateway()

    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("secret internals of a bug")

    monkeypatch.setattr(gw.runtime.proxy, "_unary", broken)
    with gw.client() as client:
        reply = client.post("/v1/chat/completions", json=chat_body())
        assert reply.status_code == 500
        assert reply.json()["error"]["code"] == "internal_error" and "secret" not in reply.text
        assert client.post("/v1/chat/completions", json=chat_body(stream=True)).status_code == 200  # streams unhurt
    assert wait_until(lambda: gw.runtime.pools[FAKE_MODEL].in_flight() == 0)  # the slot came back
    gw.thread.stop()
    assert [r["status"] for r in ledger_rows(gw.db_url)] == [500, 200]
    assert any(r.levelno == logging.ERROR and "secret internals" in r.getMessage() for r in caplog.records)
