"""The `quantserve` command. Each stage package adds its own commands through `register(app)`."""

from __future__ import annotations

import importlib
import sys

import typer

from quantserve.errors import UserError

app = typer.Typer(
    name="quantserve",
    help="Quantize a chat model into variants, serve them behind an OpenAI-compatible gateway, "
    "and measure latency, cost and answer quality.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_STATE = {"debug": False}

# Each module exposes register(app); a stage whose libraries are missing from this environment
# still registers (its heavy imports happen inside the commands).
_STAGES = ("quantserve.quantize.cli", "quantserve.serve.cli", "quantserve.eval.cli")


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    _STATE["debug"] = debug


@app.command("run")
def run_all(
    model: str = typer.Option("smollm2-135m-instruct", "--model", "-m", help="Source model (default: embedded)."),
    variants: str = typer.Option("all", help="Variants to build (comma list or 'all')."),
    variants_dir: str = typer.Option("variants", help="Where variant folders go."),
    runs_dir: str = typer.Option("runs", help="Where run folders (and the runs/latest link) go."),
    max_tokens: int = typer.Option(64, min=1, help="Completion tokens per load-test request."),
    samples: int = typer.Option(64, min=1, help="Calibration samples."),
    seq_len: int = typer.Option(256, min=16, help="Tokens per calibration sample."),
    sweep: str = typer.Option("concurrency=1,4", help="Load points per served model."),
    requests: int = typer.Option(8, min=1, help="Measured requests per load point."),
    gpu: str = typer.Option("cpu-2core", help="Price row the cost is computed for (eval/prices.yaml)."),
    slo: str = typer.Option(None, help="SLO like ttft_p99=2000ms,itl_p99=500ms (default: eval/slo.yaml)."),
    engines: int = typer.Option(6, min=1, help="Most vLLM engines to run at once (the source counts as one)."),
) -> None:
    """The whole job: fetch the model, quantize, serve what runs here, evaluate, write the report."""
    from pathlib import Path

    from quantserve.pipeline import RunOptions, run

    run(RunOptions(model=model, variants=variants, variants_dir=Path(variants_dir), runs_dir=Path(runs_dir),
                   samples=samples, seq_len=seq_len, sweep=sweep, requests_per_point=requests,
                   max_tokens=max_tokens, gpu=gpu, slo=slo, max_engines=engines))


@app.command("probe")
def probe_cmd(
    force: bool = typer.Option(False, "--force", help="Probe again even if this machine's result is cached."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Which checkpoint formats run on this machine, in which dtype, how fast (real vLLM engines, cached)."""
    import json

    from rich.console import Console
    from rich.table import Table

    from quantserve.checkpoint import FORMATS
    from quantserve.probe import cache_path, ensure_probe, table_rows

    result = ensure_probe(force=force)
    if as_json:
        typer.echo(json.dumps({**result.model_dump(mode="json"), "cache": str(cache_path(result.machine)),
                               "verdicts": {f: result.verdict(f).model_dump() for f in FORMATS}}, indent=2))
        return
    rows = table_rows(result)
    table = Table(title=f"{result.machine.summary()} — probed {result.probed_at} on {result.model} "
                        f"({result.wall_time_s:.0f}s); * = the dtype serving uses")
    for column in rows[0] if rows else ():
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row.values())
    Console(width=max(120, Console().width)).print(table)
    typer.echo(f"cached: {cache_path(result.machine)} (--force probes again)")


def _register_stages() -> None:
    for name in _STAGES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and err.name.startswith("quantserve"):
                continue  # stage not written yet
            raise
        module.register(app)


_register_stages()


def main() -> None:
    debug = "--debug" in sys.argv
    try:
        app(standalone_mode=False)
    except UserError as err:
        if debug:
            raise
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as err:
        # Usage errors (click's, or the copy typer vendors) arrive here in non-standalone mode.
        if callable(getattr(err, "show", None)) and isinstance(getattr(err, "exit_code", None), int):
            err.show()
            sys.exit(err.exit_code)
        if type(err).__name__ == "Abort":
            sys.exit(1)
        if debug:
            raise
        typer.secho(f"error: {type(err).__name__}: {err} (run with --debug for the traceback)",
                    fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
