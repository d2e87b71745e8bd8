"""The `quantserve` command. Each stage package adds its own commands through `register(app)`."""

from __future__ import annotations

import importlib
import sys

import typer

from quantserve.app.pipeline import RunOptions
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


_RUN = RunOptions()  # the run command's defaults are RunOptions' own


@app.command("run")
def run_all(
    model: str = typer.Option(_RUN.model, "--model", "-m", help="Source model (default: embedded)."),
    variants: str = typer.Option(_RUN.variants, help="Variants to build: comma list of names and groups, 'default' "
                                                             "(all but the opt-in ones in quantize/variants.yaml), "
                                                             "'all', 'runtimes' (llama.cpp's and OpenVINO's) or a "
                                                             "runtime; e.g. default,runtimes."),
    variants_dir: str = typer.Option(str(_RUN.variants_dir), help="Where variant folders go."),
    runs_dir: str = typer.Option(str(_RUN.runs_dir), help="Where run folders (and the runs/latest link) go."),
    max_tokens: int = typer.Option(_RUN.max_tokens, min=1, help="Completion tokens per load-test request."),
    samples: int = typer.Option(_RUN.samples, min=1, help="Calibration samples."),
    seq_len: int = typer.Option(_RUN.seq_len, min=16, help="Tokens per calibration sample."),
    sweep: str = typer.Option(_RUN.sweep, help="Load points per served model."),
    requests: int = typer.Option(_RUN.requests_per_point, min=1,
                                 help="Measured requests per load point (100 back a p99; fewer are faster and the "
                                      "report says where n is too small)."),
    gpu: str = typer.Option(_RUN.gpu, help="Price row the cost is computed for (quantserve/prices.yaml)."),
    slo: str = typer.Option(None, help="SLO like ttft_p99=2000ms,itl_p99=500ms (default: eval/slo.yaml)."),
    engines: int = typer.Option(_RUN.max_engines, min=1,
                                help="Most models to measure, each alone (the source counts as one)."),
    min_recovery: float = typer.Option(_RUN.min_recovery, "--min-recovery", min=0,
                                      help="Quality floor of the recommendation: task recovery's 95% CI lower "
                                           "bound; 0 turns it off."),
    max_kld: float = typer.Option(_RUN.max_kld, "--max-kld", min=0,
                                 help="Quality floor where tasks were not run: highest mean KLD vs the source."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Libraries' output (bars, warnings, logs) on the terminal too; without it "
                                      "it goes to run.log in the run folder."),
) -> None:
    """The whole job: fetch the model, quantize, serve what runs here, evaluate, write the report."""
    from pathlib import Path

    from quantserve.app.pipeline import run

    run(RunOptions(model=model, variants=variants, variants_dir=Path(variants_dir), runs_dir=Path(runs_dir),
                   samples=samples, seq_len=seq_len, sweep=sweep, requests_per_point=requests,
                   max_tokens=max_tokens, gpu=gpu, slo=slo, max_engines=engines, min_recovery=min_recovery,
                   max_kld=max_kld, verbose=verbose))


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
                               "verdicts": {f: result.verdict(f).model_dump() for f in FORMATS},
                               "engine_env": result.engine_env, "placement": result.placement_reason()}, indent=2))
        return
    rows = table_rows(result)
    table = Table(title=f"{result.machine.summary()} — probed {result.probed_at} on {result.model} "
                        f"({result.wall_time_s:.0f}s); * = the dtype serving uses")
    for column in rows[0] if rows else ():
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row.values())
    Console(width=max(120, Console().width)).print(table)
    if placement := result.placement_reason():
        typer.echo(placement)
    typer.echo(f"cached: {cache_path(result.machine)} (--force probes again)")


def _register_stages() -> None:
    # Every stage must import: a stage that silently dropped out would make its commands vanish from --help,
    # and a broken import would look like a missing feature instead of a bug.
    for name in _STAGES:
        importlib.import_module(name).register(app)


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
