"""The gateway's own cost against a zero-latency upstream: how many requests per second one gateway process
carries and how much latency it adds, non-streamed, auth and ledger on, as in production.

The stub runs in a process of its own, the gateway in another, the load client here. Each uvicorn loop/parser
pair is measured: the closed loop finds the most requests per second; the open loop at a fixed rate compares
latency through the gateway with latency straight to the stub, rounds alternating so drift hits both alike.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from quantserve.app.bench.stub import LoadResult, drive, request_bytes, run_fast
from quantserve.serve.config import ServeConfig
from quantserve.serve.gateway import GatewayProcess
from quantserve.serve.keys import KeyStore
from quantserve.serve.processes import allocate_ports, die_with_parent
from quantserve.stats import percentile

log = logging.getLogger("quantserve.serve.bench")

STUB_MODEL = "stub"
TARGETS = {"rps_min": 1000.0, "p99_added_ms_max": 10.0}
PAIRS = (("uvloop", "httptools"), ("asyncio", "h11"))


@dataclass(frozen=True)
class OverheadPlan:
    seconds: float = 4.0  # per measured phase
    rate: float = 1000.0  # open-loop requests/s
    connections: int = 32
    rounds: int = 3


@contextmanager
def _stub(port: int, log_path: Path) -> Any:
    with open(log_path, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "quantserve.app.bench.stub", str(port)], stdout=out,
                                stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _summary(result: LoadResult) -> dict[str, Any]:
    lat, own = result.latencies_ms, result.overheads_ms
    return {
        "requests": len(lat), "errors": result.errors, "wall_s": round(result.wall_s, 3),
        "rps": round(result.rps, 1),
        "latency_ms_p50": round(percentile(lat, 50), 3) if lat else None,
        "latency_ms_p99": round(percentile(lat, 99), 3) if lat else None,
        "overhead_header_ms_p50": round(percentile(own, 50), 3) if own else None,
        "overhead_header_ms_p99": round(percentile(own, 99), 3) if own else None,
    }


def _merge(results: list[LoadResult]) -> LoadResult:
    merged = LoadResult()
    for r in results:
        merged.sent += r.sent
        merged.errors += r.errors
        merged.latencies_ms += r.latencies_ms
        merged.overheads_ms += r.overheads_ms
        merged.wall_s += r.wall_s
    return merged


def _measure_pair(loop: str, http: str, stub_url: str, tmp: Path, plan: OverheadPlan) -> dict[str, Any]:
    db_url = f"sqlite:///{tmp / f'overhead-{loop}.db'}"
    port = allocate_ports("127.0.0.1", 18700, 1)[0]
    config = ServeConfig(port=port, auth=True, database_url=db_url, loop=loop, http=http, log_level="warning",
                         health_interval_s=1.0)  # type: ignore[arg-type]
    key = KeyStore(db_url).create("overhead-bench")[1]
    gateway = GatewayProcess(config, {STUB_MODEL: [stub_url]}, tmp / f"gateway-{loop}.log")
    gateway.start()
    body = json.dumps({"model": STUB_MODEL, "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 1}).encode()
    stub_port = int(stub_url.rsplit(":", 1)[1])
    via_gateway = request_bytes(port, "/v1/chat/completions", body, key)
    direct = request_bytes(stub_port, "/v1/chat/completions", body, None)
    try:
        run_fast(drive(port, via_gateway, connections=plan.connections, seconds=1.0))  # warm-up
        peak = run_fast(drive(port, via_gateway, connections=plan.connections, seconds=plan.seconds))
        runs: dict[str, list[LoadResult]] = {"gateway": [], "direct": []}
        for r in range(plan.rounds):
            order = ("gateway", "direct") if r % 2 == 0 else ("direct", "gateway")
            for path in order:
                target, raw = (port, via_gateway) if path == "gateway" else (stub_port, direct)
                runs[path].append(run_fast(drive(target, raw, connections=plan.connections, seconds=plan.seconds,
                                                 rate=plan.rate)))
    finally:
        gateway.stop()
    gw, dr = _summary(_merge(runs["gateway"])), _summary(_merge(runs["direct"]))
    added_p50 = gw["latency_ms_p50"] - dr["latency_ms_p50"] if gw["latency_ms_p50"] and dr["latency_ms_p50"] else None
    added_p99 = gw["latency_ms_p99"] - dr["latency_ms_p99"] if gw["latency_ms_p99"] and dr["latency_ms_p99"] else None
    row = {
        "loop": loop, "http": http,
        "closed_loop": _summary(peak),
        f"open_loop_{plan.rate:g}rps": {"gateway": gw, "direct": dr,
                                         "added_ms_p50": round(added_p50, 3) if added_p50 is not None else None,
                                         "added_ms_p99": round(added_p99, 3) if added_p99 is not None else None},
    }
    log.info("overhead %s+%s: peak %.0f req/s; at %g req/s p99 %.2f ms via gateway vs %.2f ms direct", loop, http,
             peak.rps, plan.rate, gw["latency_ms_p99"] or float("nan"), dr["latency_ms_p99"] or float("nan"))
    return row


def measure_overhead(tmp: Path, plan: OverheadPlan | None = None) -> dict[str, Any]:
    plan = plan or OverheadPlan()
    stub_port = allocate_ports("127.0.0.1", 18750, 1)[0]
    with _stub(stub_port, tmp / "stub.log") as stub_url:
        pairs = [_measure_pair(loop, http, stub_url, tmp, plan) for loop, http in PAIRS]
    open_key = f"open_loop_{plan.rate:g}rps"
    best = max(pairs, key=lambda p: p["closed_loop"]["rps"])
    added = best[open_key]["added_ms_p99"]
    return {
        "plan": {"seconds": plan.seconds, "rate": plan.rate, "connections": plan.connections, "rounds": plan.rounds,
                 "auth": True, "ledger": "sqlite", "streamed": False},
        "pairs": pairs,
        "fastest": f"{best['loop']}+{best['http']}",
        "targets": TARGETS,
        "checks": {"rps": best["closed_loop"]["rps"] >= TARGETS["rps_min"],
                   "p99_added": added is not None and added <= TARGETS["p99_added_ms_max"],
                   "no_errors": all(p["closed_loop"]["errors"] == 0 and p[open_key]["gateway"]["errors"] == 0
                                    for p in pairs)},
    }


def measure_in_subprocess(tmp: Path, plan: OverheadPlan) -> dict[str, Any]:
    """In a fresh interpreter: a load client sharing a process with a loaded model (and its heap, and torch's
    spinning threads) measures its own pauses, not the gateway's."""
    out = tmp / "overhead.json"
    subprocess.run([sys.executable, "-m", "quantserve.app.bench.overhead", str(out), str(plan.seconds),
                    str(plan.rate), str(plan.connections), str(plan.rounds)], check=True)
    return json.loads(out.read_text())


def main(argv: list[str]) -> None:
    import gc
    import tempfile

    from quantserve.serve.gateway import configure_logging

    configure_logging("info")
    out = Path(argv[0])
    plan = OverheadPlan(*(float(a) for a in argv[1:3]), *(int(a) for a in argv[3:5]))
    gc.collect()
    gc.freeze()  # the client's own collections would show up as the gateway's latency
    with tempfile.TemporaryDirectory(prefix="quantserve-overhead-") as tmp:
        out.write_text(json.dumps(measure_overhead(Path(tmp), plan), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
