"""`quantserve usage`: tokens, requests and cost per key and model from the ledger, priced by quantserve/prices.yaml."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, func, select

from quantserve.errors import UserError
from quantserve.prices import PriceTable, load_price_table
from quantserve.serve.config import DatabaseSettings
from quantserve.serve.db import api_keys, get_engine, usage

GROUP_FIELDS = ("key", "model")
NO_AUTH_KEY = "(no auth)"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclass
class UsageRow:
    key: str  # key name, "(no auth)" for --no-auth traffic, "*" when not grouped by key
    model: str
    requests: int
    errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


def parse_since(text: str, now: float | None = None) -> float:
    """'90s', '30m', '1h', '7d', '2w' back from now, or an ISO date/time; returns unix seconds."""
    now = time.time() if now is None else now
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise UserError(
            f"--since {text!r}: use a duration like 30m, 1h, 7d or an ISO time like 2026-11-30T08:00"
        ) from None


def parse_group(text: str) -> tuple[str, ...]:
    fields = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = [f for f in fields if f not in GROUP_FIELDS]
    if unknown:
        raise UserError(f"--by {text}: unknown field {unknown[0]!r}; use key, model or key,model")
    return fields


def summarize_usage(
    database_url: str, since_ts: float, by: tuple[str, ...] = GROUP_FIELDS, price_table: PriceTable | None = None
) -> list[UsageRow]:
    """Rows grouped by `by` (a subset of key, model), largest cost first; priced per model, then merged."""
    if price_table is None:
        price_table = load_price_table()
    # A report over months of rows may rightly take longer than the gateway's per-statement limit.
    engine = get_engine(database_url, DatabaseSettings(statement_timeout_s=0))
    query = (
        select(
            usage.c.key_id,
            usage.c.model,
            func.count().label("requests"),
            func.sum(case((usage.c.status >= 400, 1), else_=0)).label("errors"),
            func.coalesce(func.sum(usage.c.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(usage.c.completion_tokens), 0).label("completion_tokens"),
        )
        .where(usage.c.ts >= since_ts)
        .group_by(usage.c.key_id, usage.c.model)
    )
    with engine.connect() as conn:
        detail = conn.execute(query).mappings().all()
        names = dict(conn.execute(select(api_keys.c.id, api_keys.c.name)).tuples().all())

    merged: dict[tuple[str, str], UsageRow] = {}
    for row in detail:
        key = names.get(row["key_id"], row["key_id"]) if row["key_id"] else NO_AUTH_KEY
        price = price_table.token_price(row["model"])
        cost = price.cost_usd(int(row["prompt_tokens"]), int(row["completion_tokens"]))
        group = (key if "key" in by else "*", row["model"] if "model" in by else "*")
        acc = merged.setdefault(group, UsageRow(group[0], group[1], 0, 0, 0, 0, 0.0))
        acc.requests += int(row["requests"])
        acc.errors += int(row["errors"] or 0)
        acc.prompt_tokens += int(row["prompt_tokens"])
        acc.completion_tokens += int(row["completion_tokens"])
        acc.cost_usd += cost
    return sorted(merged.values(), key=lambda r: (-r.cost_usd, r.key, r.model))
