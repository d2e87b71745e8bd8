"""`quantserve run` (`make run`): the whole job on one model, offline.

fetch -> probe this machine -> quantize -> for each model that runs here, alone: serve it, load + tasks through
the gateway, stop it -> the source again (this machine's noise) -> report. Each stage is the same code its own
command runs; this module only sequences them and sizes the eval to the time budget. A variant that does not run
here, or whose engine fails to start, is left out with its reason, and the report says why; the others go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from quantserve.checkpoint import FORMATS
from quantserve.errors import UserError
from quantserve.eval.recommend import DEFAULT_MAX_KLD, DEFAULT_MIN_RECOVERY
from quantserve.model_fetch import DEFAULT_MODEL
from quantserve.probe import ProbeResult, ensure_probe
from quantserve.progress import Bar, quiet_to, say


@dataclass
class RunOptions:
    model: str = DEFAULT_MODEL
    variants: str = "default"  # every recipe not marked opt_in; "all" adds those
    variants_dir: Path = Path("variants")
    runs_dir: Path = Path("runs")
    samples: int = 64
    seq_len: int = 256
    scenario: str = "support-chat"
    sweep: str = "concurrency=1,4"
    # 100 measured requests back a p99 (eval/stats.py min_samples); 12-token answers keep 100 of them at
    # concurrency 1 inside the time budget and still give TPOT 11 token gaps per request (1,100 per point)
    requests_per_point: int = 100
    max_tokens: int = 12
    gpu: str = "cpu-2core"
    slo: str | None = None
    min_recovery: float = DEFAULT_MIN_RECOVERY  # the recommendation's quality floor; 0 turns it off
    max_kld: float = DEFAULT_MAX_KLD
    # models measured, the source included; one engine runs at a time (`default,runtimes` selects 10 variants)
    max_engines: int = 12
    verbose: bool = False  # libraries' output on the terminal too; otherwise it goes to <run>/run.log

    def check(self) -> None:
        """Fail in the first second on an option the last stage would refuse: a mistyped --gpu, --sweep, --slo
        or --scenario must not cost the whole quantize stage first."""
        from quantserve.eval.loadgen import parse_sweep
        from quantserve.eval.scenarios import load_scenario
        from quantserve.eval.slo import parse_slo
        from quantserve.prices import load_price_table
        from quantserve.quantize.recipes import select_variants

        parse_sweep(self.sweep)
        parse_slo(self.slo)
        if self.gpu:
            load_price_table().hardware(self.gpu)
        load_scenario(self.scenario)
        select_variants(self.variants)


def _pick_served(variants_dir: Path, max_engines: int, probe: ProbeResult,
                 selected: set[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """Variants to host beside the source: those of the recipes this run selected (`--variants`; None: any in the
    folder) whose format the probe runs here, 8-bit first (closest to the source), up to the engine budget; the
    rest with the reason. The folder may hold more (`make bench` builds the opt-in recipes there too)."""
    from quantserve.manifest import list_manifests

    found = [(folder, m) for folder, m in list_manifests(variants_dir) if selected is None or m.variant in selected]
    verdicts = {m.name: probe.verdict_for(folder) for folder, m in found}
    runnable = sorted((m for _, m in found if verdicts[m.name].runs is not False), key=lambda m: (-m.bits, m.name))
    chosen = [m.name for m in runnable[: max(0, max_engines - 1)]]
    skipped = {m.name: verdicts[m.name].reason if verdicts[m.name].runs is False
               else "over the engine budget of this run (--engines)" for _, m in found if m.name not in chosen}
    return chosen, skipped


def run(opts: RunOptions) -> Path:
    from quantserve.eval.runner import default_run_dir

    opts.check()
    run_dir = default_run_dir(opts.runs_dir)
    log_file = None if opts.verbose else run_dir / "run.log"
    with quiet_to(log_file):
        html = _run(opts, run_dir)
    if log_file is not None:
        say(f"log:    {log_file} (libraries' output; --verbose shows it here)")
    return html


def _run(opts: RunOptions, run_dir: Path) -> Path:
    from quantserve.eval.answer import print_answer
    from quantserve.eval.isolation import merge_runs
    from quantserve.eval.report import ReportConstraints, build_report
    from quantserve.eval.runner import update_latest
    from quantserve.model_fetch import resolve_model
    from quantserve.quantize.recipes import select_variants
    from quantserve.quantize.runner import QuantizeOptions, quantize

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # The serve stage reports through logging (engines starting, up, skipped): to the log in a quiet run
    logging.basicConfig(level=logging.WARNING, format="[quantserve] %(message)s")
    logging.getLogger("quantserve").setLevel(logging.INFO)
    start = time.perf_counter()

    def stage(n: int, what: str) -> None:
        say(f"== [{n}/6] {what} (t+{time.perf_counter() - start:.0f}s)")

    stage(1, "source model")
    source = resolve_model(opts.model)
    stage(2, "probe this machine: which formats run, in which dtype (cached per machine)")
    probe = ensure_probe()
    for fmt in FORMATS:
        say(f"  {probe.verdict(fmt).reason}")
    if placement := probe.placement_reason():
        say(f"  {placement}")
    stage(3, "quantize")
    quantize(QuantizeOptions(model=opts.model, variants=opts.variants, out=opts.variants_dir,
                             samples=opts.samples, seq_len=opts.seq_len))
    served, skipped = _pick_served(opts.variants_dir, opts.max_engines, probe, set(select_variants(opts.variants)))
    for name, why in skipped.items():
        say(f"not served in this run: {name}: {why}")
    models = [str(source), *(str(opts.variants_dir / name) for name in served)]
    stage(4, f"serve and evaluate each model alone, the other engines stopped: {len(models)} model(s), "
             f"{opts.requests_per_point} requests at each of {opts.sweep}, then the task set")
    parts: list[Path] = []
    source_name: str | None = None
    with Bar(len(models), "evaluate") as bar:
        for i, ref in enumerate(models, 1):
            bar.at(i - 1, Path(ref).name)
            t0 = time.perf_counter()
            part = _measure_alone(ref, opts, probe, run_dir / "parts" / f"{i:02d}-{Path(ref).name}", skipped)
            if part is not None:
                parts.append(part)
                say(f"  [{i}/{len(models)}] {Path(ref).name}: {_one_line(part)} ({time.perf_counter() - t0:.0f}s)")
                if i == 1:
                    source_name = _served_name(part)
        bar.at(len(models))
    if not parts:
        raise UserError("nothing was measured: every engine failed to start (see the reasons above)")
    # The repeat states how far this machine's speed moves over the run, which is what decides a tie on cost:
    # the heaviest load point is where cost is read, and greedy task answers do not move with it.
    heaviest = _heaviest_point(opts.sweep)
    stage(5, f"the source again at {heaviest}, to measure this machine's speed drift over the run")
    repeat = (_measure_alone(str(source), opts, probe, run_dir / "parts" / "repeat-source", skipped,
                             sweep=heaviest, tasks=False)
              if source_name is not None else None)
    merge_runs(parts, run_dir, source_name, repeat, skipped)
    stage(6, "report")
    html = build_report(run_dir, opts.variants_dir, ReportConstraints(
        slo=opts.slo, gpu=opts.gpu, min_recovery=opts.min_recovery, max_kld=opts.max_kld))
    update_latest(run_dir)
    say(f"done in {time.perf_counter() - start:.0f}s")
    print_answer(run_dir / "report.json")
    say(f"report: {html}")
    say(f"        {run_dir / 'report.md'}")
    return html


def _heaviest_point(sweep: str) -> str:
    from quantserve.eval.loadgen import parse_sweep

    points = parse_sweep(sweep)
    top = max(points, key=lambda p: p.value)
    return f"{top.mode}={top.value:g}"


def _one_line(part: Path) -> str:
    """What one model's measurement found, for the terminal: output tok/s per load point and task accuracy."""
    from quantserve.eval.runner import read_eval

    doc = read_eval(part)
    result = next(iter(doc["results"].values()), {})
    speeds = [f"{p['point']} {p['metrics'].get('output_throughput') or 0:.1f} tok/s" for p in result.get("points", [])]
    tasks = result.get("tasks") or {}
    acc = f", tasks {tasks['accuracy']:.2f}" if isinstance(tasks.get("accuracy"), int | float) else ""
    return ", ".join(speeds) + acc


def _measure_alone(ref: str, opts: RunOptions, probe: ProbeResult, out: Path, skipped: dict[str, str],
                   sweep: str | None = None, tasks: bool = True) -> Path | None:
    """Serve one model (its engine the only one running), measure it through the gateway, stop it."""
    from quantserve.eval.runner import EvalConfig, run_eval
    from quantserve.serve.config import load_config
    from quantserve.serve.stack import ServeStack

    config = load_config(None, model_refs=[ref], auth=False, port=0, host_sources=False)
    with contextlib.ExitStack() as running:
        try:
            stack = running.enter_context(ServeStack(config, probe=lambda: probe, best_effort=True))
        except UserError as err:  # its engine failed to start: the others go on (only this counts as that)
            skipped[Path(ref).name] = str(err)
            say(f"not measured: {Path(ref).name}: {err}")
            return None
        skipped.update(stack.skipped)
        return run_eval(EvalConfig(
            base_url=stack.base_url, scenario=opts.scenario, models=stack.models, sweep=sweep or opts.sweep,
            # the cap only stops a point stuck far past its budget: 100 answers of 12 tokens took 25-140 s here
            num_requests=opts.requests_per_point, duration_s=240, warmup=1, max_tokens=opts.max_tokens,
            tasks=tasks, slo=opts.slo, gpu=opts.gpu, variants_dir=opts.variants_dir, out=out, not_served=skipped,
            # vLLM's phase histograms; llama.cpp and OpenVINO engines export no such phases
            engine_metrics_url=f"{stack.engine_url(stack.models[0])}/metrics"
            if stack.model_info.get(stack.models[0], {}).get("runtime", "vllm") == "vllm" else None,
        ))
    return None


def _served_name(part: Path) -> str | None:
    from quantserve.eval.runner import read_eval

    models = read_eval(part)["models"]
    return models[0] if models else None
