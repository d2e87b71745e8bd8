"""`quantserve serve`, `quantserve keys create|list|revoke` and `quantserve usage`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import datetime
from pathlib import Path

import typer

from quantserve.serve.config import ServeConfig, load_config


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    keys_app = typer.Typer(help="Gateway API keys: create (shown once), list, revoke.", no_args_is_help=True)
    keys_app.command("create")(keys_create)
    keys_app.command("list")(keys_list)
    keys_app.command("revoke")(keys_revoke)
    app.add_typer(keys_app, name="keys")
    app.command("usage")(usage)


_CONFIG_OPT = typer.Option(None, "--config", metavar="YAML", help="serve.yaml (see serve/serve.example.yaml).")
_DB_OPT = typer.Option(None, "--db", metavar="URL", help="Database URL (default: SQLite under the state dir; "
                       "postgresql://... to share one across gateways).")


def _db_config(config_file: Path | None, db: str | None) -> ServeConfig:
    return load_config(config_file, database_url=db)


def serve(
    variants: Path | None = typer.Option(
        None, "--variants", metavar="DIR",
        help="Folder of quantized variants; hosts every variant servable here plus their source, skipping the "
        "others with a warning."),
    model: list[str] | None = typer.Option(
        None, "--model", metavar="PATH_OR_NAME",
        help="A model folder, a variant name from --variants (then only the named ones), or an HF id. Repeatable."),
    config_file: Path | None = _CONFIG_OPT,
    no_auth: bool = typer.Option(False, "--no-auth", help="Accept requests without an API key (local dev)."),
    host: str | None = typer.Option(None, "--host", help="Bind address (default 127.0.0.1)."),
    port: int | None = typer.Option(None, "--port", help="Gateway port (default 8000)."),
) -> None:
    """Start a vLLM engine per model and the OpenAI-compatible gateway in front of them."""
    from quantserve.serve.gateway import configure_logging
    from quantserve.serve.stack import ServeStack

    config = load_config(config_file, variants_dir=variants, model_refs=model or None,
                         auth=False if no_auth else None, host=host, port=port)
    configure_logging(config.log_level)
    with ServeStack(config, gateway_mode="thread") as stack:
        auth = "on: send 'Authorization: Bearer sk-qs-...' (quantserve keys create --name NAME)" \
            if config.auth else "OFF (--no-auth)"
        typer.echo(f"gateway: {stack.base_url}/v1   models: {', '.join(stack.models)}")
        for name, info in stack.model_info.items():
            typer.echo(f"  {name}: {info['format']} in {info['dtype'] or 'auto'}"
                       + (" (set in the serve config)" if info["dtype_from"] == "config" else
                          " (fastest measured here by `quantserve probe`)"))
        for name, why in stack.skipped.items():
            typer.echo(f"  not served: {name}: {why}")
        typer.echo(f"auth {auth}; metrics {stack.base_url}/metrics; Ctrl-C to stop")
        stack.serve_forever()
    typer.echo("stopped; usage rows flushed")


def keys_create(
    name: str = typer.Option(..., "--name", help="Who the key is for, e.g. team-a."),
    rpm: int | None = typer.Option(None, "--rpm", help="Requests per minute (default: config default_rpm)."),
    tpm: int | None = typer.Option(None, "--tpm", help="Tokens per minute (default: config default_tpm)."),
    config_file: Path | None = _CONFIG_OPT,
    db: str | None = _DB_OPT,
) -> None:
    """Create a key. It is printed once; only its SHA-256 is stored."""
    from quantserve.serve.keys import KeyStore

    config = _db_config(config_file, db)
    record, key = KeyStore(config.resolved_database_url()).create(
        name, rpm if rpm is not None else config.default_rpm, tpm if tpm is not None else config.default_tpm
    )
    typer.echo(key)
    limits = f"rpm={record.rpm or 'unlimited'} tpm={record.tpm or 'unlimited'}"
    typer.echo(f"created {record.id} '{record.name}' ({limits}); store the key now, it is not shown again",
               err=True)


def keys_list(config_file: Path | None = _CONFIG_OPT, db: str | None = _DB_OPT) -> None:
    """List keys (id, name, prefix, limits, state); never the keys themselves."""
    from quantserve.serve.keys import KeyStore

    config = _db_config(config_file, db)
    keys = KeyStore(config.resolved_database_url()).list()
    if not keys:
        typer.echo("no keys; create one with `quantserve keys create --name NAME`")
        return
    typer.echo(f"{'id':<14} {'name':<20} {'prefix':<14} {'rpm':>8} {'tpm':>10}  {'created':<16} state")
    for k in keys:
        state = f"revoked {_when(k.revoked_at)}" if k.revoked_at else "active"
        typer.echo(f"{k.id:<14} {k.name:<20} {k.prefix + '…':<14} {k.rpm or '-':>8} {k.tpm or '-':>10}  "
                   f"{_when(k.created_at):<16} {state}")


def keys_revoke(
    name_or_id: str = typer.Argument(..., help="Key name or id (from `keys list`)."),
    config_file: Path | None = _CONFIG_OPT,
    db: str | None = _DB_OPT,
) -> None:
    """Revoke a key; running gateways refuse it within key_cache_ttl_s (5 s by default)."""
    from quantserve.serve.keys import KeyStore

    config = _db_config(config_file, db)
    record = KeyStore(config.resolved_database_url()).revoke(name_or_id)
    typer.echo(f"revoked {record.id} '{record.name}'")


def usage(
    since: str = typer.Option("24h", "--since", help="30m, 1h, 7d, ... or an ISO time."),
    by: str = typer.Option("key,model", "--by", help="Group by key, model or key,model."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows instead of a table."),
    config_file: Path | None = _CONFIG_OPT,
    db: str | None = _DB_OPT,
) -> None:
    """Requests, tokens and cost per key and model from the usage ledger, priced with quantserve/prices.yaml."""
    from quantserve.serve.usage import parse_group, parse_since, summarize_usage

    config = _db_config(config_file, db)
    group = parse_group(by)
    since_ts = parse_since(since)
    rows = summarize_usage(config.resolved_database_url(), since_ts, group)
    if as_json:
        typer.echo(json.dumps([asdict(r) | {"total_tokens": r.total_tokens} for r in rows], indent=2))
        return
    typer.echo(f"usage since {_when(since_ts)}")
    if not rows:
        typer.echo("no requests in that window")
        return
    typer.echo(f"{'key':<20} {'model':<40} {'requests':>9} {'errors':>7} {'prompt':>10} {'completion':>11} "
               f"{'cost_usd':>11}")
    for r in rows:
        typer.echo(f"{r.key:<20} {r.model:<40} {r.requests:>9} {r.errors:>7} {r.prompt_tokens:>10} "
                   f"{r.completion_tokens:>11} {r.cost_usd:>11.6f}")
    total = sum(r.cost_usd for r in rows)
    typer.echo(f"{'total':<20} {'':<40} {sum(r.requests for r in rows):>9} {sum(r.errors for r in rows):>7} "
               f"{sum(r.prompt_tokens for r in rows):>10} {sum(r.completion_tokens for r in rows):>11} "
               f"{total:>11.6f}")


def _when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts or time.time()).strftime("%Y-%m-%d %H:%M")
