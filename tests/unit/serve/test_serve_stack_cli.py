"""ServeStack end to end without vLLM (a model served by an external upstream: the fake), and the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
import yaml
from sqlalchemy import create_engine, text

from quantserve.serve.config import load_config
from quantserve.serve.keys import KeyStore
from quantserve.serve.stack import ServeStack
from tests.support.serve_helpers import FAKE_MODEL, chat_body, free_port


@pytest.mark.parametrize("mode", ["thread", "process"])
def test_stack_with_external_upstream(tmp_path, fake_upstream, mode):
    server, _ = fake_upstream
    db_url = f"sqlite:///{tmp_path / 'stack.db'}"
    config_file = tmp_path / "serve.yaml"
    config_file.write_text(yaml.safe_dump({
        "port": free_port(), "database_url": db_url, "health_interval_s": 0.2,
        "models": [{"name": FAKE_MODEL, "upstreams": [server.url + "/v1"]}],
    }))
    _, key = KeyStore(db_url).create("stack")
    with ServeStack(load_config(config_file), gateway_mode=mode, log_dir=tmp_path / "logs") as stack:
        assert stack.models == [FAKE_MODEL]
        assert stack.engine_url(FAKE_MODEL) == server.url
        assert stack.base_url == f"http://127.0.0.1:{stack.config.port}"
        headers = {"Authorization": f"Bearer {key}"}
        reply = httpx.post(f"{stack.base_url}/v1/chat/completions", json=chat_body(), headers=headers,
                           trust_env=False)
        assert reply.status_code == 200
        assert httpx.get(f"{stack.base_url}/ready", trust_env=False).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stack.base_url}/health", trust_env=False)
    engine = create_engine(db_url)
    with engine.connect() as conn:  # the stack's exit flushed the ledger
        assert conn.execute(text("SELECT COUNT(*) FROM qs_usage")).scalar_one() == 1
    engine.dispose()


def test_port_zero_picks_a_free_port(tmp_path, fake_upstream):
    server, _ = fake_upstream
    config = load_config(port=0, auth=False, database_url=f"sqlite:///{tmp_path / 'x.db'}",
                         models=[{"name": FAKE_MODEL, "upstreams": [server.url]}])
    with ServeStack(config) as stack:
        assert stack.config.port != 0
        assert httpx.get(f"{stack.base_url}/health", trust_env=False).status_code == 200


def test_cli_keys_and_usage(cli, tmp_path):
    env = {**os.environ, "QUANTSERVE_HOME": str(tmp_path / "home")}
    created = cli("keys", "create", "--name", "team-a", "--rpm", "60", "--tpm", "100000", env=env)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("sk-qs-") and "not shown again" in created.stderr
    again = cli("keys", "create", "--name", "team-a", env=env)
    assert again.returncode == 2 and "already exists" in again.stderr
    listed = cli("keys", "list", env=env)
    assert "team-a" in listed.stdout and key not in listed.stdout and "active" in listed.stdout
    assert cli("keys", "revoke", "team-a", env=env).returncode == 0
    assert "revoked" in cli("keys", "list", env=env).stdout
    assert cli("keys", "revoke", "nobody", env=env).returncode == 2

    db_url = f"sqlite:///{tmp_path / 'home' / 'serve.db'}"
    engine = create_engine(db_url)
    key_id = KeyStore(db_url).list()[0].id
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO qs_usage (ts, key_id, model, endpoint, stream, status, prompt_tokens, completion_tokens,"
            " ttft_ms, latency_ms, gateway) VALUES (:ts, :key, 'm1', '/v1/completions', 0, 200, 1000, 2000,"
            " NULL, 5.0, 'g')"), {"ts": time.time(), "key": key_id})
    engine.dispose()
    table = cli("usage", "--since", "1h", env=env)
    assert table.returncode == 0 and "team-a" in table.stdout and "m1" in table.stdout
    as_json = cli("usage", "--since", "1h", "--by", "model", "--json", env=env)
    (row,) = json.loads(as_json.stdout)
    assert (row["model"], row["prompt_tokens"], row["completion_tokens"], row["key"]) == ("m1", 1000, 2000, "*")
    assert row["cost_usd"] > 0
    assert cli("usage", "--since", "soon", env=env).returncode == 2


def test_cli_serve_refuses_what_cannot_run_before_starting_anything(cli, tmp_path):
    env = {**os.environ, "QUANTSERVE_HOME": str(tmp_path / "home")}
    result = cli("serve", "--variants", str(tmp_path / "missing"), env=env)
    assert result.returncode == 2 and "variants folder not found" in result.stderr
    assert "Traceback" not in result.stderr


OWNER = """
import sys, time
from quantserve.serve.config import load_config
from quantserve.serve.stack import ServeStack
config = load_config(port=0, auth=False, database_url=sys.argv[2], models=[{"name": "m", "upstreams": [sys.argv[1]]}])
stack = ServeStack(config, gateway_mode="process", log_dir=__import__("pathlib").Path(sys.argv[3]))
stack.start()
print(stack.gateway.proc.pid, flush=True)
time.sleep(600)
"""


def test_gateway_process_dies_with_a_killed_owner(tmp_path, fake_upstream):
    server, _ = fake_upstream
    owner = subprocess.Popen([sys.executable, "-c", OWNER, server.url, f"sqlite:///{tmp_path / 'o.db'}",
                              str(tmp_path / "logs")], stdout=subprocess.PIPE, text=True)
    try:
        gateway_pid = int(owner.stdout.readline())  # type: ignore[union-attr]
        assert psutil.pid_exists(gateway_pid)
        owner.kill()  # SIGKILL: no cleanup code runs in the owner
        owner.wait(10)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if not psutil.pid_exists(gateway_pid) or psutil.Process(gateway_pid).status() == psutil.STATUS_ZOMBIE:
                break
            time.sleep(0.1)
        else:
            os.kill(gateway_pid, signal.SIGKILL)
            pytest.fail("the gateway process outlived its killed owner")
    finally:
        if owner.poll() is None:
            owner.kill()
