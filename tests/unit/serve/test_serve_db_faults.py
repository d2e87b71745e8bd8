"""Database faults (issue 8, item 5): bounded timeouts, key checks during an outage, a ledger that loses nothing.

The faults are real wherever one can be made on one machine: a SQLite file another connection has locked
(`BEGIN EXCLUSIVE` blocks writers; exclusive locking mode blocks readers too), a TCP server that never answers
PostgreSQL's handshake, a cancelled writer task. The stopped-PostgreSQL soak is in
tests/integration/serve/test_serve_postgres.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, insert, text

from quantserve.serve.auth import Authenticator
from quantserve.serve.config import DatabaseSettings, ServeConfig
from quantserve.serve.db import engine_options, get_engine, usage
from quantserve.serve.errors import OpenAIError
from quantserve.serve.keys import KeyStore
from quantserve.serve.ledger import Ledger, UsageRecord
from tests.support.serve_helpers import wait_until

FAST = DatabaseSettings(sqlite_busy_timeout_s=0.1)  # a locked database fails in 0.1 s, not 5


def sqlite_path(db_url: str) -> str:
    return db_url.removeprefix("sqlite:///")


@contextlib.contextmanager
def writes_locked(db_url: str) -> Iterator[None]:
    """Another connection holds SQLite's write lock: every other writer fails once its busy timeout runs out."""
    conn = sqlite3.connect(sqlite_path(db_url), isolation_level=None, timeout=5)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


@contextlib.contextmanager
def locked_out(db_url: str, *engines: Engine) -> Iterator[None]:
    """Another connection takes the file for itself (exclusive locking mode): reads fail too, as with a database
    that cannot be reached. The pools' idle connections hold a shared lock on the file that would stop it, so
    they are closed first, as a restarted gateway would have none."""
    for engine in engines:
        engine.dispose()
    conn = sqlite3.connect(sqlite_path(db_url), isolation_level=None, timeout=5)
    conn.execute("PRAGMA locking_mode=EXCLUSIVE")
    conn.execute("BEGIN EXCLUSIVE")
    conn.execute("COMMIT")  # in exclusive locking mode the lock stays until the connection closes
    try:
        yield
    finally:
        conn.close()


def count_rows(db_url: str) -> tuple[int, int, int]:
    engine = create_engine(db_url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT COUNT(*), COALESCE(SUM(prompt_tokens), 0), "
                                "COALESCE(SUM(completion_tokens), 0) FROM qs_usage")).one()
    engine.dispose()
    return int(row[0]), int(row[1]), int(row[2])


def record(i: int) -> UsageRecord:
    return UsageRecord(ts=time.time(), key_id="key_1", model="m", endpoint="/v1/completions", status=200,
                       latency_ms=10.0 + i / 1000, prompt_tokens=i % 7 + 1, completion_tokens=i % 5,
                       gateway="test")


def expected(n: int) -> tuple[int, int, int]:
    return n, sum(i % 7 + 1 for i in range(n)), sum(i % 5 for i in range(n))


def spill_files(path: Path) -> list[Path]:
    return sorted(p for p in path.parent.glob(path.name + "*") if p.stat().st_size > 0)


async def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- timeouts ------------------------------------------------------------------------------------------------

def test_timeouts_are_settings_in_one_place(monkeypatch):
    defaults = DatabaseSettings()
    assert (defaults.connect_timeout_s, defaults.statement_timeout_s, defaults.sqlite_busy_timeout_s) == (3, 5, 5)
    pg = engine_options("postgresql+psycopg2://u@db:5432/q", defaults)
    assert pg["connect_args"]["connect_timeout"] == 3
    assert pg["connect_args"]["options"] == "-c statement_timeout=5000"
    assert pg["pool_timeout"] == 8
    assert "options" not in engine_options("postgresql://u@db/q", DatabaseSettings(statement_timeout_s=0))[
        "connect_args"]
    monkeypatch.setenv("QUANTSERVE_DATABASE_URL", "postgresql://u@db/q")  # the nested model beside it
    monkeypatch.setenv("QUANTSERVE_DATABASE__STATEMENT_TIMEOUT_S", "2.5")
    config = ServeConfig()
    assert (config.database_url, config.database.statement_timeout_s) == ("postgresql://u@db/q", 2.5)


def test_sqlite_busy_timeout_bounds_a_locked_write(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'busy.db'}"
    engine = get_engine(db_url, DatabaseSettings(sqlite_busy_timeout_s=0.25))
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA busy_timeout")).scalar_one() == 250
    with writes_locked(db_url):
        started = time.monotonic()
        with pytest.raises(Exception, match="database is locked"), engine.begin() as conn:
            conn.execute(insert(usage).values(ts=1.0, model="m", endpoint="e", status=200, latency_ms=1.0))
        assert time.monotonic() - started < 2  # was 30 s, the hard-coded busy timeout


def test_postgres_connect_timeout_against_a_server_that_never_answers():
    # A listening socket nobody accepts on: the kernel completes the TCP handshake, then PostgreSQL's startup
    # packet gets no answer, like a database host that hangs. Without connect_timeout libpq waits for ever.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"postgresql+psycopg2://quantserve@127.0.0.1:{silent.getsockname()[1]}/postgres"
        engine = create_engine(url, **engine_options(url, DatabaseSettings(connect_timeout_s=2)))
        started = time.monotonic()
        with pytest.raises(Exception, match="timeout"), engine.connect():
            pass
        assert time.monotonic() - started < 6
        engine.dispose()


# --- key checks during an outage -----------------------------------------------------------------------------

async def test_key_check_during_an_outage(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'keys.db'}"
    store = KeyStore(db_url, FAST)
    _, key_a = store.create("a")
    _, key_b = store.create("b")
    clock = Clock()
    auth = Authenticator(store, enabled=True, cache_ttl_s=5, outage_grace_s=60, retry_after_s=2, clock=clock)
    assert (await auth.authenticate(f"Bearer {key_a}")).name == "a"  # verified at t=1000

    with locked_out(db_url, store.engine):
        clock.now += 10  # past the TTL: the database is asked, does not answer, the cached key still works
        assert (await auth.authenticate(f"Bearer {key_a}")).name == "a"
        with pytest.raises(OpenAIError) as err:  # never verified here: cannot be checked
            await auth.authenticate(f"Bearer {key_b}")
        assert err.value.status == 503 and err.value.headers == {"Retry-After": "2"}
        assert err.value.body() == {"error": {
            "message": "the API key database is unreachable, so this key cannot be checked right now; retry "
                       "shortly", "type": "server_error", "param": None, "code": "auth_unavailable"}}
        clock.now = 1000 + 5 + 60 + 1  # past TTL + grace: not vouched for any more
        with pytest.raises(OpenAIError) as err:
            await auth.authenticate(f"Bearer {key_a}")
        assert err.value.status == 503

    clock.now += 3  # past Retry-After: the database is asked again, and answers
    assert (await auth.authenticate(f"Bearer {key_a}")).name == "a"
    store.revoke("a")
    clock.now += 10
    with pytest.raises(OpenAIError) as err:
        await auth.authenticate(f"Bearer {key_a}")
    assert err.value.status == 401
    with locked_out(db_url, store.engine):  # the next outage does not bring the revoked key back
        clock.now += 1
        with pytest.raises(OpenAIError) as err:
            await auth.authenticate(f"Bearer {key_a}")
        assert err.value.status == 503


def test_gateway_answers_503_with_retry_after_when_the_key_database_is_unreachable(make_gateway):
    gw = make_gateway(key_cache_ttl_s=0.0,  # every request asks the database
                      database={"sqlite_busy_timeout_s": 0.1, "outage_retry_after_s": 3})
    other_key = KeyStore(gw.db_url).create("other")[1]
    with gw.client() as client:
        assert client.get("/v1/models").status_code == 200
    with locked_out(gw.db_url, get_engine(gw.db_url), get_engine(gw.db_url, gw.config.database)):
        with gw.client() as client:
            assert client.get("/v1/models").status_code == 200  # verified moments ago: kept working
        with gw.client(other_key) as client:
            started = time.monotonic()
            reply = client.get("/v1/models")
            again = client.get("/v1/models")
    assert reply.status_code == 503 and reply.headers["retry-after"] == "3"
    assert reply.json() == {"error": {
        "message": "the API key database is unreachable, so this key cannot be checked right now; retry shortly",
        "type": "server_error", "param": None, "code": "auth_unavailable"}}
    assert again.status_code == 503 and time.monotonic() - started < 2  # no timeout waited per request


# --- the ledger ----------------------------------------------------------------------------------------------

async def test_full_queue_spills_to_disk_instead_of_growing(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    spill = tmp_path / "spill.jsonl"
    ledger = Ledger(db_url, fallback_path=spill, max_queue=10, database=FAST)
    await ledger.start()
    for i in range(50):  # no await in between: the writer cannot run, the queue fills
        ledger.record(record(i))
    assert ledger.pending() == 10
    assert len(spill.read_text().splitlines()) == 40 == ledger.spilled
    await ledger.close()  # writes the queued ten and replays the forty
    assert count_rows(db_url) == expected(50)
    assert spill_files(spill) == []


async def test_locked_database_rows_spill_and_are_replayed_when_it_is_back(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    spill = tmp_path / "spill.jsonl"
    ledger = Ledger(db_url, batch_size=8, flush_interval_s=0.01, fallback_path=spill, retry_interval_s=0.2,
                    database=FAST)
    await ledger.start()
    with writes_locked(db_url):
        for i in range(30):
            ledger.record(record(i))
            await asyncio.sleep(0.01)
        assert await wait_for(lambda: ledger.spilled == 30 and ledger.pending() == 0)
        assert count_rows(db_url) == (0, 0, 0)
    for i in range(30, 50):  # the database is back: new rows go to it, the spill is replayed beside them
        ledger.record(record(i))
        await asyncio.sleep(0.01)
    assert await wait_for(lambda: count_rows(db_url)[0] == 50)  # replayed while running, not only at close
    await ledger.close()
    assert count_rows(db_url) == expected(50)
    # rows that came within retry_interval_s of the last failure went to the spill file too, by design
    assert ledger.written + ledger.spilled == 50 and ledger.spilled >= 30 and ledger.replayed == ledger.spilled
    assert spill_files(spill) == []


def test_replay_skips_rows_already_in_the_database_and_keeps_unreadable_lines(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    spill = tmp_path / "spill.jsonl"
    ledger = Ledger(db_url, fallback_path=spill, database=FAST)
    rows = [record(i) for i in range(8)]
    ledger.write_batch(rows[:5])
    # A commit whose acknowledgement was lost: the rows are in the table and in the spill file as well.
    ledger.spill.append([vars(r) for r in rows])
    with open(spill, "a") as out:
        out.write('{"ts": 1.0, "model": "cut sh')  # a line a crash cut short
    assert ledger.replay() == 3
    assert count_rows(db_url) == expected(8)
    assert spill_files(spill) == [tmp_path / "spill.jsonl.rejected"]
    assert ledger.replay() == 0


async def test_spill_left_by_an_earlier_gateway_is_replayed_at_start(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    spill = tmp_path / "spill.jsonl"
    rows = [vars(record(i)) for i in range(6)]
    spill.write_text("".join(json.dumps(r) + "\n" for r in rows[:4]))
    # a copy a process claimed for replay and then died with: its lock died with it
    (tmp_path / "spill.jsonl.999-1.replay").write_text("".join(json.dumps(r) + "\n" for r in rows[4:]))
    ledger = Ledger(db_url, fallback_path=spill, retry_interval_s=60, database=FAST)
    await ledger.start()
    assert await wait_for(lambda: count_rows(db_url)[0] == 6)
    await ledger.close()
    assert count_rows(db_url) == expected(6)
    assert spill_files(spill) == []


async def test_dead_writer_task_is_restarted_and_keeps_its_rows(tmp_path, caplog):
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    ledger = Ledger(db_url, flush_interval_s=0.3, fallback_path=tmp_path / "spill.jsonl", database=FAST)
    await ledger.start()
    for i in range(5):
        ledger.record(record(i))
    await asyncio.sleep(0.05)  # the writer took the first row and waits out the flush interval
    assert ledger.pending() == 5
    caplog.set_level(logging.ERROR, "quantserve.serve.ledger")
    ledger._task.cancel()  # the writer dies, holding a row
    assert await wait_for(lambda: ledger.restarts == 1)
    assert "ledger writer task died (cancelled); restarting it" in caplog.text
    for i in range(5, 10):
        ledger.record(record(i))
    assert await wait_for(lambda: count_rows(db_url)[0] == 10)  # the new writer wrote them, held row included
    await ledger.close()
    assert count_rows(db_url) == expected(10)
    assert ledger.spilled == 0


def test_rows_are_kept_when_the_event_loop_ends_without_close(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"

    async def forgetful_owner() -> None:
        ledger = Ledger(db_url, flush_interval_s=1.0, fallback_path=tmp_path / "spill.jsonl", database=FAST)
        await ledger.start()
        for i in range(7):
            ledger.record(record(i))
        await asyncio.sleep(0.05)  # the writer holds a row, six wait in the queue; then asyncio.run cancels all

    asyncio.run(forgetful_owner())
    assert count_rows(db_url) == expected(7)


# --- ledger durability (issue 21, item 6) --------------------------------------------------------------------


def refused_row(i: int) -> UsageRecord:
    """A row SQLite refuses for its content (NOT NULL on model): an error no retry can fix, like PostgreSQL's
    "value too long" for a model name over the column's length."""
    row = record(i)
    row.model = None  # type: ignore[assignment]
    return row


def test_a_row_the_database_refuses_is_quarantined_and_the_rest_go_in(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    spill = tmp_path / "spill.jsonl"
    ledger = Ledger(db_url, fallback_path=spill, database=FAST)
    ledger.write_batch([record(0), refused_row(1), record(2)])
    assert count_rows(db_url)[0] == 2 and ledger.quarantined == 1
    assert [json.loads(line)["latency_ms"] for line in ledger.rejected_path.read_text().splitlines()] == [10.001]
    ledger.write_batch([record(3)])  # before: the batch spilled and the database counted as down for 5 s
    assert count_rows(db_url)[0] == 3 and ledger.spilled == 0 and ledger.health()["database_error"] is None


def test_a_refused_row_in_the_spill_does_not_block_its_replay(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    spill = tmp_path / "spill.jsonl"
    ledger = Ledger(db_url, fallback_path=spill, database=FAST)
    ledger.spill.append([vars(record(0)), vars(refused_row(1)), vars(record(2))])
    assert ledger.replay() == 2  # before: the replay raised on every round and the spill never drained
    assert count_rows(db_url)[0] == 2 and ledger.quarantined == 1
    assert not spill.exists() and ledger.replay() == 0
    ledger.spill.append([vars(record(3))])
    assert ledger.replay() == 1 and count_rows(db_url)[0] == 3


def test_a_torn_last_line_does_not_swallow_the_next_batch(tmp_path):
    db_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    spill = tmp_path / "spill.jsonl"
    ledger = Ledger(db_url, fallback_path=spill, database=FAST)
    ledger.spill.append([vars(record(0))])
    with open(spill, "a") as out:
        out.write('{"ts": 1.0, "model": "cut sh')  # a crash in the middle of an append
    ledger.spill.append([vars(record(1)), vars(record(2))])
    assert ledger.replay() == 3  # before: record(1) was glued to the torn line and rejected with it
    assert count_rows(db_url)[0] == 3
    assert ledger.rejected_path.read_text() == '{"ts": 1.0, "model": "cut sh\n'


def test_ready_and_metrics_say_when_usage_rows_cannot_be_stored(make_gateway, tmp_path):
    # Real faults: a database file in a folder that does not exist (SQLite cannot open it) and a spill path whose
    # folder is a plain file (as a full or read-only disk, the append fails with an OSError).
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    gw = make_gateway(auth=False)
    ledger = gw.runtime.ledger
    with gw.client() as client:
        assert client.get("/ready").json()["ledger"]["storing"] is True
        ledger.engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'ledger.db'}")
        ledger.spill.path = blocker / "spill.jsonl"
        ledger._db_down_until = 0.0
        assert client.post("/v1/chat/completions", json={
            "model": "fake-model", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
        assert wait_until(lambda: ledger.lost == 1, 5.0)
        ready = client.get("/ready")
        assert ready.status_code == 503 and ready.json()["ledger"]["storing"] is False
        assert ready.json()["ledger"]["lost"] == 1 and "not-a-folder" in ready.json()["ledger"]["spill_error"]
        metrics = client.get("/metrics").text
        assert "quantserve_ledger_storing 0.0" in metrics
        assert 'quantserve_ledger_rows{state="lost"} 1.0' in metrics
