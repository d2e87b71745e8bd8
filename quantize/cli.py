"""CLI: `model fetch`, `quantize`, `variants list`."""

from __future__ import annotations

from pathlib import Path

import typer

from quantserve.group_size import CANDIDATES
from quantserve.model_fetch import DEFAULT_MODEL, is_default_model
from quantserve.quantize.recipes import load_variants
from quantserve.quantize.runner import QuantizeOptions

# Defaults and the variant list come from where they are defined, so help never disagrees with behaviour.
_DEFAULTS = QuantizeOptions(threads=0)


def register(app: typer.Typer) -> None:
    model_app = typer.Typer(help="Source models: the embedded default, a Hugging Face id or a local folder.",
                            no_args_is_help=True)
    variants_app = typer.Typer(help="Published variant folders.", no_args_is_help=True)
    app.add_typer(model_app, name="model")
    app.add_typer(variants_app, name="variants")

    @model_app.command("fetch")
    def fetch(
        model: str = typer.Argument(DEFAULT_MODEL, help="Embedded default name, HF id, or local folder."),
        force: bool = typer.Option(False, help="Convert the embedded default again even if cached."),
    ) -> None:
        """Make the source model a local HF folder and print its path (cached: a second fetch is a no-op)."""
        from quantserve.model_fetch import ensure_default_model, resolve_model

        path = ensure_default_model(force=True) if force and is_default_model(model) else resolve_model(model)
        typer.echo(path)

    @app.command("quantize")
    def quantize_cmd(
        model: str = typer.Option(DEFAULT_MODEL, "--model", "-m",
                                  help="Embedded default name, HF id, or local folder."),
        variants: str = typer.Option(_DEFAULTS.variants, "--variants", "-v",
                                     help="Comma list of names from quantize/variants.yaml and groups: "
                                          "'default' (all but the opt-in ones), 'all', a runtime ('vllm', "
                                          "'llama.cpp', 'openvino') or 'runtimes' (all but vLLM's): " + ", ".join(
                                              f"{n}{' (opt-in)' if r.opt_in else ''}"
                                              for n, r in load_variants().items()) + "."),
        out: Path = typer.Option(_DEFAULTS.out, "--out", "-o", help="Folder that receives one folder per variant."),
        samples: int = typer.Option(_DEFAULTS.samples, min=1, help="Calibration samples (GPTQ/AWQ/W8A8)."),
        seq_len: int = typer.Option(_DEFAULTS.seq_len, min=16, help="Tokens per calibration sample."),
        group_size: str = typer.Option(str(_DEFAULTS.group_size), help="INT4 group size, or 'auto': the largest "
                                       f"of {'/'.join(map(str, CANDIDATES))} dividing every quantized layer's "
                                       "input width."),
        force: bool = typer.Option(False, help="Rebuild even when the same recipe was already published."),
        max_kld: float = typer.Option(None, help="Fail, and do not publish, a variant whose mean KLD is above this."),
        min_top1: float = typer.Option(None, help="Fail, and do not publish, a variant whose top-1 agreement is "
                                                  "below this."),
        threads: int = typer.Option(0, help="Torch threads per build (0: all cores)."),
        recipes: Path = typer.Option(None, help="YAML of extra recipes (same form as quantize/variants.yaml)."),
        calibration_file: Path = typer.Option(None, help="Chat JSONL for calibration (default: prompts/calibration/)."),
        heldout_file: Path = typer.Option(None, help="Chat JSONL for the quality check (default: prompts/heldout/)."),
    ) -> None:
        """Quantize a source model into variants, each a vLLM-loadable folder with manifest.json."""
        from quantserve.quantize.runner import QuantizeOptions, quantize
        from quantserve.quantize.variants_table import print_table

        opts = QuantizeOptions(model=model, variants=variants, out=out, samples=samples, seq_len=seq_len,
                               group_size=group_size, force=force, max_kld=max_kld, min_top1=min_top1,
                               recipes_file=recipes)
        if threads:
            opts.threads = threads
        if calibration_file:
            opts.calibration_file = calibration_file
        if heldout_file:
            opts.heldout_file = heldout_file
        quantize(opts)
        print_table(out)

    @variants_app.command("list")
    def list_cmd(
        root: Path = typer.Argument(Path("variants"), help="Variants folder."),
        as_json: bool = typer.Option(False, "--json", help="Print the manifests' key numbers as JSON."),
    ) -> None:
        """Name, method, bits, size, size ratio, PPL ratio, KLD, top-1, vLLM-loadable, servable here (and why not)."""
        from quantserve.quantize.variants_table import print_json, print_table

        print_json(root) if as_json else print_table(root)
