"""A soak through the gateway to a real engine: unary and streamed requests, some cancelled by the client
mid-stream, at a fixed concurrency; then the ledger is reconciled with what was answered and what vLLM counted.

Each kind of request runs under its own API key, so the ledger's rows per key can be matched exactly with the
usage the client was shown: unary answers and streams that asked for usage. Streams that did not ask, and those
the client cancelled (with one answer, or three: n=3), are matched by count; their tokens are set against vLLM's own
counters and against the tokens the client received before it hung up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
from sqlalchemy import create_engine, func, select

from quantserve.serve.db import usage

log = logging.getLogger("quantserve.serve.bench")

Kind = Literal["unary", "stream_usage", "stream_plain", "cancelled", "cancelled_n"]
KINDS: tuple[Kind, ...] = ("unary", "stream_usage", "stream_plain", "cancelled", "cancelled_n")
MIX: dict[Kind, float] = {"unary": 0.3, "stream_usage": 0.2, "stream_plain": 0.2, "cancelled": 0.15,
                          "cancelled_n": 0.15}
CUT: tuple[Kind, ...] = ("cancelled", "cancelled_n")


@dataclass
class SoakPlan:
    requests: int = 1000
    concurrency: int = 32
    max_tokens: tuple[int, int] = (4, 16)
    seed: int = 7


@dataclass
class KindTally:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    prompt_tokens: int = 0  # the usage the client was shown (unary, stream_usage)
    completion_tokens: int = 0
    chunks: int = 0  # chunks carrying generated text received (streams): one token of one answer each


def _body(model: str, kind: Kind, prompt: str, max_tokens: int) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": prompt}],
                            "max_tokens": max_tokens, "temperature": 0.0}
    if kind != "unary":
        body["stream"] = True
    if kind == "stream_usage":
        body["stream_options"] = {"include_usage": True}
    if kind in CUT:
        body["ignore_eos"] = True  # long enough to be cut: the client hangs up after a few chunks
        body["max_tokens"] = 64
    if kind == "cancelled_n":
        body["n"] = 3  # vLLM's running usage counts each answer on its own chunks
    return body


async def _send(client: httpx.AsyncClient, base: str, key: str, kind: Kind, body: dict[str, Any],
                tally: KindTally, cut_after: int) -> None:
    headers = {"authorization": f"Bearer {key}"}
    url = f"{base}/v1/chat/completions"
    tally.sent += 1
    if kind == "unary":
        reply = await client.post(url, json=body, headers=headers)
        tally.statuses[reply.status_code] += 1
        if reply.status_code == 200:
            usage_seen = reply.json()["usage"]
            tally.prompt_tokens += usage_seen["prompt_tokens"]
            tally.completion_tokens += usage_seen["completion_tokens"]
        return
    chunks = 0
    async with client.stream("POST", url, json=body, headers=headers) as reply:
        tally.statuses[reply.status_code] += 1
        async for line in reply.aiter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if event.get("usage"):
                tally.prompt_tokens += event["usage"]["prompt_tokens"]
                tally.completion_tokens += event["usage"]["completion_tokens"]
            if event.get("choices"):
                chunks += 1
                tally.chunks += sum(1 for c in event["choices"] if (c.get("delta") or {}).get("content"))
                if kind in CUT and chunks >= cut_after * (body.get("n") or 1):
                    return  # leaving the block closes the connection mid-stream


def engine_counters(engine_url: str, headers: dict[str, str]) -> dict[str, float]:
    """vLLM's own token counters; its /metrics takes the engine key like every route but /health."""
    reply = httpx.get(f"{engine_url}/metrics", headers=headers, trust_env=False, timeout=10)
    reply.raise_for_status()  # a refused read would count 0 tokens and pass for a reconciliation
    text = reply.text
    wanted = {"vllm:prompt_tokens_total": 0.0, "vllm:generation_tokens_total": 0.0}
    for line in text.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        if name in wanted:
            wanted[name] += float(line.rsplit(" ", 1)[1])
    return wanted


async def run_soak(base: str, model: str, keys: dict[Kind, str], prompts: list[str], plan: SoakPlan
                   ) -> dict[Kind, KindTally]:
    rng = random.Random(plan.seed)
    kinds: list[Kind] = rng.choices(list(MIX), weights=list(MIX.values()), k=plan.requests)
    tallies: dict[Kind, KindTally] = {k: KindTally() for k in KINDS}
    todo = iter(range(plan.requests))
    limits = httpx.Limits(max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits, trust_env=False) as client:

        async def worker(seed: int) -> None:
            local = random.Random(seed)
            for i in todo:
                kind = kinds[i]
                body = _body(model, kind, prompts[i % len(prompts)], local.randint(*plan.max_tokens))
                try:
                    await _send(client, base, keys[kind], kind, body, tallies[kind], cut_after=local.randint(1, 3))
                except httpx.HTTPError as err:
                    tallies[kind].statuses[0] += 1  # 0: no HTTP answer at all
                    log.warning("soak %s request failed: %s", kind, err)

        await asyncio.gather(*(worker(plan.seed + w) for w in range(plan.concurrency)))
    return tallies


def reconcile(db_url: str, key_ids: dict[Kind, str], tallies: dict[Kind, KindTally],
              engine_before: dict[str, float], engine_after: dict[str, float]) -> dict[str, Any]:
    """After the gateway stopped (its ledger flushed): rows and tokens per key against what the client saw."""
    engine = create_engine(db_url)
    per_kind: dict[str, Any] = {}
    with engine.connect() as conn:
        for kind, key_id in key_ids.items():
            rows = conn.execute(
                select(func.count(), func.coalesce(func.sum(usage.c.prompt_tokens), 0),
                       func.coalesce(func.sum(usage.c.completion_tokens), 0))
                .where(usage.c.key_id == key_id)).one()
            statuses = dict(conn.execute(select(usage.c.status, func.count()).where(usage.c.key_id == key_id)
                                         .group_by(usage.c.status)).all())
            tally = tallies[kind]
            per_kind[kind] = {
                "sent": tally.sent, "client_statuses": dict(tally.statuses), "ledger_rows": rows[0],
                "ledger_statuses": {str(k): v for k, v in statuses.items()},
                "ledger_prompt_tokens": int(rows[1]), "ledger_completion_tokens": int(rows[2]),
                "client_prompt_tokens": tally.prompt_tokens, "client_completion_tokens": tally.completion_tokens,
                "client_chunks": tally.chunks,
            }
    engine.dispose()
    sent = sum(t.sent for t in tallies.values())
    rows = sum(k["ledger_rows"] for k in per_kind.values())
    shown = ("unary", "stream_usage")
    tokens_match = all(per_kind[k]["ledger_prompt_tokens"] == per_kind[k]["client_prompt_tokens"]
                       and per_kind[k]["ledger_completion_tokens"] == per_kind[k]["client_completion_tokens"]
                       for k in shown)
    server_errors = sum(n for t in tallies.values() for s, n in t.statuses.items() if s >= 500 or s == 0)
    vllm_prompt = engine_after["vllm:prompt_tokens_total"] - engine_before["vllm:prompt_tokens_total"]
    vllm_generated = engine_after["vllm:generation_tokens_total"] - engine_before["vllm:generation_tokens_total"]
    ledger_prompt = sum(k["ledger_prompt_tokens"] for k in per_kind.values())
    ledger_completion = sum(k["ledger_completion_tokens"] for k in per_kind.values())
    return {
        "requests": sent, "ledger_rows": rows, "per_kind": per_kind,
        "vllm_prompt_tokens": vllm_prompt, "vllm_generation_tokens": vllm_generated,
        "ledger_prompt_tokens": ledger_prompt, "ledger_completion_tokens": ledger_completion,
        "checks": {
            "rows_equal_requests": rows == sent,
            "no_5xx_or_lost": server_errors == 0,
            "tokens_equal_usage_shown": tokens_match,
            "completion_within_vllm_count": ledger_completion <= vllm_generated,
            # a cut stream is billed at least the tokens its client received, every answer's (n = 3 included)
            "cut_streams_billed_what_they_got": all(
                per_kind[k]["ledger_completion_tokens"] >= per_kind[k]["client_chunks"] for k in CUT),
        },
    }
