"""Two gateway replicas' key stores and ledgers on one throwaway PostgreSQL cluster: one ledger, shared keys.

Each "replica" is its own process (its own SQLAlchemy engine and connection pool, as on two machines). Needs the
PostgreSQL server binaries (Debian: `apt-get install -y postgresql`); skipped, saying so, when they are absent.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quantserve.serve.keys import KeyStore
from quantserve.serve.usage import summarize_usage

pytestmark = pytest.mark.serve

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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
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
    port = _free_port()

    def pg(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(pg_bin / args[0]), *args[1:]], capture_output=True, text=True, user=run_as,
                              timeout=120, check=False)

    init = pg("initdb", "-D", str(data), "-U", "quantserve", "--auth=trust", "--no-sync", "-E", "UTF8")
    assert init.returncode == 0, init.stderr
    start = pg("pg_ctl", "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
               f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    assert start.returncode == 0, start.stderr + (log.read_text() if log.exists() else "")
    try:
        yield f"postgresql+psycopg2://quantserve@127.0.0.1:{port}/postgres"
    finally:
        pg("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


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

    from sqlalchemy import create_engine, text

    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        per_gateway = dict(conn.execute(text("SELECT gateway, COUNT(*) FROM qs_usage GROUP BY gateway")).all())
    engine.dispose()
    assert per_gateway == {"a": 120, "b": 80}
    rows = summarize_usage(postgres_url, time.time() - 3600, by=("model",))
    assert sum(r.requests for r in rows) == 200
    assert sum(r.prompt_tokens for r in rows) == 2000 and sum(r.completion_tokens for r in rows) == 4000
