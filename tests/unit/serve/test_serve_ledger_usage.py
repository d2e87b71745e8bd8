"""The usage ledger (batching, flush on close, nothing lost) and `quantserve usage` aggregation and pricing."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import create_engine, text

from quantserve.errors import UserError
from quantserve.prices import PriceTable, TokenPrice
from quantserve.serve.keys import KeyStore
from quantserve.serve.ledger import Ledger, UsageRecord
from quantserve.serve.usage import NO_AUTH_KEY, parse_group, parse_since, summarize_usage


def count_rows(db_url: str) -> int:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        n = conn.execute(text("SELECT COUNT(*) FROM qs_usage")).scalar_one()
    engine.dispose()
    return int(n)


def record(model: str = "m", key_id: str | None = "key_1", prompt: int = 10, completion: int = 5,
           status: int = 200, ts: float | None = None) -> UsageRecord:
    return UsageRecord(ts=ts or time.time(), key_id=key_id, model=model, endpoint="/v1/chat/completions",
                       status=status, latency_ms=12.0, prompt_tokens=prompt, completion_tokens=completion,
                       ttft_ms=3.0, stream=True, gateway="test")


async def test_ledger_flushes_everything_on_close(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(db_url, batch_size=50)
    await ledger.start()
    for _ in range(1234):
        ledger.record(record())  # never blocks, never touches the database on the caller's side
    await ledger.close()
    assert count_rows(db_url) == 1234
    assert ledger.written == 1234
    ledger.record(record())  # a straggler after shutdown is still written
    assert count_rows(db_url) == 1235


async def test_ledger_writes_while_running(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(db_url)
    await ledger.start()
    ledger.record(record())
    for _ in range(100):
        if count_rows(db_url) == 1:
            break
        await __import__("asyncio").sleep(0.02)
    assert count_rows(db_url) == 1  # written at once when the gateway is quiet
    await ledger.close()


def test_rows_the_database_refuses_go_to_the_fallback_file(tmp_path, monkeypatch):
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", fallback_path=tmp_path / "fallback.jsonl")
    monkeypatch.setattr("quantserve.serve.ledger.time.sleep", lambda _s: None)
    with ledger.engine.begin() as conn:
        conn.execute(text("DROP TABLE qs_usage"))
    ledger.write_batch([record(), record(model="x")])
    lines = (tmp_path / "fallback.jsonl").read_text().splitlines()
    assert [json.loads(line)["model"] for line in lines] == ["m", "x"]


PRICES = PriceTable(hardware_rows=[], token_prices=[
    TokenPrice(model="cheap-*", input_usd_per_1m=1.0, output_usd_per_1m=2.0),
    TokenPrice(model="*", input_usd_per_1m=10.0, output_usd_per_1m=20.0),
])


async def test_usage_sums_and_prices_per_key_and_model(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    store = KeyStore(db_url)
    a, _ = store.create("team-a")
    b, _ = store.create("team-b")
    ledger = Ledger(db_url)
    await ledger.start()
    now = time.time()
    for _ in range(3):
        ledger.record(record("cheap-1", a.id, 1000, 500, ts=now))
    ledger.record(record("big", a.id, 100, 0, status=400, ts=now))
    ledger.record(record("big", b.id, 2000, 1000, ts=now))
    ledger.record(record("big", None, 10, 10, ts=now))
    ledger.record(record("big", b.id, 999_999, 999_999, ts=now - 7200))  # outside --since 1h
    await ledger.close()

    rows = summarize_usage(db_url, parse_since("1h", now=now + 1), price_table=PRICES)
    by = {(r.key, r.model): r for r in rows}
    assert set(by) == {("team-a", "cheap-1"), ("team-a", "big"), ("team-b", "big"), (NO_AUTH_KEY, "big")}
    cheap = by[("team-a", "cheap-1")]
    assert (cheap.requests, cheap.errors, cheap.prompt_tokens, cheap.completion_tokens) == (3, 0, 3000, 1500)
    assert cheap.cost_usd == pytest.approx((3000 * 1.0 + 1500 * 2.0) / 1e6)
    assert by[("team-a", "big")].errors == 1
    assert by[("team-b", "big")].cost_usd == pytest.approx((2000 * 10 + 1000 * 20) / 1e6)
    assert rows[0].key == "team-b"  # largest cost first

    per_key = {r.key: r for r in summarize_usage(db_url, now - 3600, by=("key",), price_table=PRICES)}
    assert per_key["team-a"].requests == 4 and per_key["team-a"].model == "*"
    assert per_key["team-a"].cost_usd == pytest.approx(cheap.cost_usd + (100 * 10) / 1e6)
    (total,) = summarize_usage(db_url, now - 3600, by=(), price_table=PRICES)
    assert total.requests == 6
    assert summarize_usage(db_url, now - 3600, price_table=None)  # the shared quantserve/prices.yaml loads


def test_since_and_group_parsing():
    assert parse_since("90s", now=1000.0) == 910.0
    assert parse_since("2h", now=10_000.0) == 2800.0
    assert parse_since("1d", now=100_000.0) == 13_600.0
    assert parse_since("2026-11-30T08:00") > 0
    with pytest.raises(UserError):
        parse_since("yesterday")
    assert parse_group("key,model") == ("key", "model")
    assert parse_group("model") == ("model",)
    with pytest.raises(UserError):
        parse_group("key,colour")
