"""Two gateway replicas' key stores and ledgers on one throwaway PostgreSQL cluster: one ledger, shared keys; and
a gateway that keeps serving and loses no usage row while that PostgreSQL is stopped and started again.

Each "replica" is its own process (its own SQLAlchemy engine and connection pool, as on two machines). Needs the
PostgreSQL server binaries (Debian: `apt-get install -y postgresql`); skipped, saying so, when they are absent.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from quantserve.serve.config import DatabaseSettings, ServeConfig
from quantserve.serve.db import get_engine
from quantserve.serve.gateway import GatewayThread
from quantserve.serve.keys import KeyStore
from quantserve.serve.usage import summarize_usage
from tests.support.helpers import free_port

# The fake OpenAI upstream the gateway unit tests use: the soak below needs a gateway, not vLLM.
from tests.support.serve_fake_upstream import FakeState, ThreadedServer, create_fake_app

REPLICA = textwrap.dedent("""
    import asyncio, json, sys, time
    from quantserve.serve.keys import KeyStore
    from quantserve.serve.ledger import Ledger, UsageRecord

    url, name, rows, other_key = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = KeyStore(url)
    _, key = store.create(f"team-{name}")
    accepted = store.verify(other_key) is not None if other_key != "-" else None

    async def write() -> None:
        ledger = Ledger(url, batch_size=7)
        await ledger.start()
        for i in range(rows):
            ledger.record(UsageRecord(ts=time.time(), key_id=None, model=f"model-{i % 2}", endpoint="/v1/completions",
                                      status=200, latency_ms=1.0, prompt_tokens=10, completion_tokens=20,
                                      gateway=name))
            if i % 10 == 0:
                await asyncio.sleep(0)
        await ledger.close()

    asyncio.run(write())
    print(json.dumps({"key": key, "accepted_other": accepted}))
""")


def _pg_bin() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(candidate) / "initdb").is_file() and (Path(candidate) / "pg_ctl").is_file():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).resolve().parent if found and shutil.which("pg_ctl") else None


@dataclass
class PgCluster:
    """A throwaway PostgreSQL that a test can stop and start again, as an outage would."""

    url: str
    pg_bin: Path
    data: Path
    log: Path
    options: str
    run_as: str | None

    def pg(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.pg_bin / args[0]), *args[1:]], capture_output=True, text=True,
                              user=self.run_as, timeout=120, check=False)

    def start(self) -> None:
        start = self.pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "-o",
                        self.options, "start")
        assert start.returncode == 0, start.stderr + (self.log.read_text() if self.log.exists() else "")

    def stop(self) -> None:
        # immediate: the server goes away as in a crash, open connections and transactions with it
        stop = self.pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        assert stop.returncode == 0, stop.stderr


@pytest.fixture(scope="module")
def postgres() -> Iterator[PgCluster]:
    pg_bin = _pg_bin()
    if pg_bin is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; install with "
                    "`apt-get install -y postgresql` to run the shared-ledger test")
    # initdb refuses to run as root; as root, run the cluster as the package's `postgres` user.
    run_as: str | None = None
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
            run_as = "postgres"
        except KeyError:
            pytest.skip("running as root and no 'postgres' user to run the throwaway cluster as")
    root = Path(tempfile.mkdtemp(prefix="quantserve-pg-"))  # under /tmp: the postgres user can reach it
    data, sockets, log = root / "data", root / "sock", root / "pg.log"
    sockets.mkdir()
    if run_as:
        shutil.chown(root, run_as)
        shutil.chown(sockets, run_as)
    port = free_port()
    cluster = PgCluster(url=f"postgresql+psycopg2://quantserve@127.0.0.1:{port}/postgres", pg_bin=pg_bin,
                        data=data, log=log, run_as=run_as,
                        options=f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off")
    init = cluster.pg("initdb", "-D", str(data), "-U", "quantserve", "--auth=trust", "--no-sync", "-E", "UTF8")
    assert init.returncode == 0, init.stderr
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url(postgres: PgCluster) -> str:
    return postgres.url


def _replica(url: str, name: str, rows: int, other_key: str = "-") -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", REPLICA, url, name, str(rows), other_key],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _result(proc: subprocess.Popen[str]) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_two_replicas_share_keys_and_one_ledger(postgres_url):
    # Both start at once against an empty database: they race to create the tables, then write concurrently.
    a, b = _replica(postgres_url, "a", 120), _replica(postgres_url, "b", 80)
    key_a, key_b = _result(a)["key"], _result(b)["key"]

    # Each accepts the key the other created.
    assert _result(_replica(postgres_url, "c", 0, key_a))["accepted_other"] is True
    assert _result(_replica(postgres_url, "d", 0, key_b))["accepted_other"] is True
    store = KeyStore(postgres_url)
    assert {k.name for k in store.list()} == {"team-a", "team-b", "team-c", "team-d"}
    store.revoke("team-a")
    assert _result(_replica(postgres_url, "e", 0, key_a))["accepted_other"] is False

    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        per_gateway = dict(conn.execute(text("SELECT gateway, COUNT(*) FROM qs_usage GROUP BY gateway")).all())
    engine.dispose()
    assert per_gateway == {"a": 120, "b": 80}
    rows = summarize_usage(postgres_url, time.time() - 3600, by=("model",))
    assert sum(r.requests for r in rows) == 200
    assert sum(r.prompt_tokens for r in rows) == 2000 and sum(r.completion_tokens for r in rows) == 4000


def test_statement_timeout_ends_a_slow_query(postgres_url):
    engine = get_engine(postgres_url, DatabaseSettings(statement_timeout_s=0.5))
    started = time.monotonic()
    with pytest.raises(Exception, match="statement timeout"), engine.connect() as conn:
        conn.execute(text("SELECT pg_sleep(10)"))
    assert time.monotonic() - started < 5


class Traffic:
    """Clients sending completions to the gateway until stopped; what each got back is kept."""

    def __init__(self, base_url: str, key: str, clients: int = 2) -> None:
        self.base_url, self.key = base_url, key
        self.results: list[tuple[int, int, int]] = []  # (status, prompt_tokens, completion_tokens)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True) for n in range(clients)]

    def _run(self, n: int) -> None:
        with httpx.Client(base_url=self.base_url, headers={"Authorization": f"Bearer {self.key}"}, timeout=30,
                          trust_env=False) as client:
            i = n
            while not self._stop.is_set():
                i += 1
                reply = client.post("/v1/completions", json={"model": "fake-model", "prompt": "hi",
                                                             "max_tokens": i % 6 + 1})
                used = (reply.json().get("usage") or {}) if reply.status_code == 200 else {}
                with self._lock:
                    self.results.append((reply.status_code, used.get("prompt_tokens", 0),
                                         used.get("completion_tokens", 0)))

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)


def test_stop_postgres_during_a_soak_and_start_it_again_rows_equal_requests(postgres, tmp_path, monkeypatch):
    monkeypatch.setenv("QUANTSERVE_HOME", str(tmp_path / "home"))  # where the gateway's spill file goes
    fake = ThreadedServer(create_fake_app(FakeState()), free_port()).start()
    gateway_id = f"soak-{uuid.uuid4().hex[:8]}"  # this test's rows, apart from the other tests'
    config = ServeConfig(
        port=free_port(), database_url=postgres.url, gateway_id=gateway_id, health_interval_s=0.5,
        key_cache_ttl_s=0.5,  # well inside the outage: cached keys must live on the outage grace
        ledger={"flush_interval_s": 0.05, "retry_interval_s": 0.5, "max_queue": 100},
        database={"connect_timeout_s": 2, "statement_timeout_s": 2, "outage_retry_after_s": 1},
    )
    store = KeyStore(postgres.url)
    key = store.create(f"soak-{gateway_id}")[1]
    fresh_key = store.create(f"fresh-{gateway_id}")[1]  # never used before the outage
    gateway = GatewayThread(config, {"fake-model": [fake.url]})
    gateway.start()
    base_url = f"http://127.0.0.1:{config.port}"
    ledger = gateway.app.state.runtime.ledger  # type: ignore[attr-defined]
    try:
        with Traffic(base_url, key) as traffic:
            time.sleep(1.0)
            before_outage = len(traffic.results)
            postgres.stop()
            try:
                time.sleep(0.5)
                with httpx.Client(base_url=base_url, trust_env=False, timeout=30) as client:
                    refused = client.get("/v1/models", headers={"Authorization": f"Bearer {fresh_key}"})
                time.sleep(2.0)
                during_outage = len(traffic.results) - before_outage
            finally:
                postgres.start()
            time.sleep(1.5)
        spilled = ledger.spilled
    finally:
        gateway.stop()  # the ledger's shutdown writes what is queued and replays what is left in the spill
        fake.stop()

    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.json()["error"]["code"] == "auth_unavailable"
    statuses = {status for status, _, _ in traffic.results}
    assert statuses == {200}, f"the cached key stopped working during the outage: {statuses}"
    assert during_outage > 20 and spilled > 0  # the outage was real: requests went on, rows went to the spill

    engine = create_engine(postgres.url)
    with engine.connect() as conn:
        rows, prompt, completion = conn.execute(
            text("SELECT COUNT(*), SUM(prompt_tokens), SUM(completion_tokens) FROM qs_usage WHERE gateway = :g"),
            {"g": gateway_id},
        ).one()
    engine.dispose()
    requests = len(traffic.results)
    assert (rows, prompt, completion) == (requests, sum(p for _, p, _ in traffic.results),
                                          sum(c for _, _, c in traffic.results))
    assert not list((tmp_path / "home" / "logs").glob("ledger-spill-*")), "spilled rows were not all replayed"
    print(f"\nsoak: {requests} requests, {during_outage} during the outage, {spilled} rows spilled and "
          f"replayed, rows in PostgreSQL == requests")
