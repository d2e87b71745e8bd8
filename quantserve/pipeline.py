"""`quantserve run` (`make run`): the whole job on one model, offline.

fetch -> quantize -> serve what runs here -> load + tasks through the gateway -> report. Each stage is the
same code its own command runs; this module only sequences them and sizes the eval to the time budget.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from quantserve.errors import UserError
from quantserve.quantize.model_fetch import DEFAULT_MODEL
from quantserve.quantize.progress import say


@dataclass
class RunOptions:
    model: str = DEFAULT_MODEL
    variants: str = "all"
    variants_dir: Path = Path("variants")
    runs_dir: Path = Path("runs")
    samples: int = 64
    seq_len: int = 256
    scenario: str = "support-chat"
    sweep: str = "concurrency=1,4"
    requests_per_point: int = 8
    max_tokens: int = 64
    gpu: str = "cpu-2core"
    slo: str | None = None
    # Engines idle while another model is measured, so several fit 2 cores; each holds ~2-4 GB of RAM.
    max_engines: int = 4


def _pick_served(variants_dir: Path, max_engines: int) -> tuple[list[str], list[str]]:
    """Variants to host beside the source: servable ones, 8-bit first (closest to the source)."""
    from quantserve.quantize.manifest import list_manifests

    manifests = [m for _, m in list_manifests(variants_dir)]
    servable = sorted((m for m in manifests if m.servable_here), key=lambda m: (-m.bits, m.name))
    chosen = [m.name for m in servable[: max(0, max_engines - 1)]]
    skipped = [f"{m.name}: {m.servable_reason if not m.servable_here else 'over the engine budget of this run'}"
               for m in manifests if m.name not in chosen]
    return chosen, skipped


def run(opts: RunOptions) -> Path:
    from quantserve.eval.report import ReportConstraints, build_report
    from quantserve.eval.runner import EvalConfig, default_run_dir, run_eval, update_latest
    from quantserve.quantize.model_fetch import resolve_model
    from quantserve.quantize.runner import QuantizeOptions, quantize
    from quantserve.serve.config import load_config
    from quantserve.serve.stack import ServeStack

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()

    def stage(n: int, what: str) -> None:
        say(f"== [{n}/5] {what} (t+{time.perf_counter() - start:.0f}s)")

    stage(1, "source model")
    source = resolve_model(opts.model)
    stage(2, "quantize")
    quantize(QuantizeOptions(model=opts.model, variants=opts.variants, out=opts.variants_dir,
                             samples=opts.samples, seq_len=opts.seq_len))
    served, skipped = _pick_served(opts.variants_dir, opts.max_engines)
    for line in skipped:
        say(f"not served in this run: {line}")
    stage(3, f"serve the source + {', '.join(served) or 'no variant'}")
    refs = [str(source), *(str(opts.variants_dir / name) for name in served)]
    config = load_config(None, model_refs=refs, auth=False, port=0)
    with ServeStack(config) as stack:
        if not stack.models:
            raise UserError("no model could be served on this machine")
        stage(4, f"evaluate {', '.join(stack.models)} through the gateway at {stack.base_url}")
        run_dir = run_eval(EvalConfig(
            base_url=stack.base_url, scenario=opts.scenario, models=stack.models, sweep=opts.sweep,
            num_requests=opts.requests_per_point, duration_s=90, warmup=1, max_tokens=opts.max_tokens,
            slo=opts.slo, gpu=opts.gpu, variants_dir=opts.variants_dir, out=default_run_dir(opts.runs_dir),
        ))
    stage(5, "report")
    html = build_report(run_dir, opts.variants_dir, ReportConstraints(slo=opts.slo, gpu=opts.gpu))
    update_latest(run_dir)
    say(f"done in {time.perf_counter() - start:.0f}s")
    say(f"report: {html}")
    say(f"        {run_dir / 'report.md'}")
    return html
