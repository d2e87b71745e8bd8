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
    except Exception as err:  # click's own usage errors arrive here in non-standalone mode
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(1)
        if debug:
            raise
        typer.secho(f"error: {type(err).__name__}: {err} (run with --debug for the traceback)",
                    fg=typer.colors.RED, err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
