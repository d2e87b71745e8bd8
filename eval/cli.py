"""`quantserve eval` and `quantserve report`."""

from __future__ import annotations

from pathlib import Path

import typer

from quantserve.eval.recommend import DEFAULT_MAX_KLD, DEFAULT_MIN_RECOVERY
from quantserve.eval.stats import min_samples
from quantserve.eval.vram import DEFAULT_PLAN_MODEL

DEFAULT_REQUESTS = min_samples(99)  # loadgen's default too; named here so the CLI starts without httpx

HELP = {
    "base_url": "OpenAI-compatible server: the quantserve gateway or vLLM directly, e.g. http://127.0.0.1:8000",
    "api_key": "Bearer key for the endpoint (or set QUANTSERVE_API_KEY).",
    "scenario": "Prompt set: support-chat, short-questions, long-context-summary, or a .jsonl path.",
    "models": "Comma-separated served model names; default: every model the endpoint lists.",
    "sweep": "Load points: concurrency=1,4,16 (parallel users), rate=1,2 (requests/s, evenly spaced) or "
             "poisson=1,2 (requests/s, seeded Poisson arrivals).",
    "requests": "Measured requests per load point; p99 is reported only from 100 up.",
    "duration": "Cap in seconds per load point; a point ends at --requests or --duration, whichever comes "
                "first. Default: no cap.",
    "warmup": "Warm-up requests per load point, sent first and not measured.",
    "timeout": "Seconds one request may take before it counts as failed.",
    "seed": "Seed for Poisson arrivals.",
    "max_tokens": "Override every prompt's max_tokens.",
    "slo": "Objectives, e.g. ttft_p99=200ms,itl_p99=50ms (metrics ttft, tpot, itl, e2e; stats mean, p50, "
           "p90, p95, p99; ms or s).",
    "gpu": "Hardware the endpoint runs on, a row of quantserve/prices.yaml (rtx-4090, l4, cpu-2core, ...); "
           "needed for $ per 1M tokens.",
    "out": "Run folder; default runs/<UTC timestamp>/ (runs/latest points at the newest).",
    "variants": "Folder of variant manifests (manifest.json per variant).",
    "source_model": "Served name of the unquantized model, the quality baseline; default: guessed from "
                    "the manifests.",
    "tasks": "Also score the support task set per model (temperature 0).",
    "tasks_file": "Task set; default prompts/tasks/support_tasks.jsonl.",
    "run_dir": "Run folder written by `quantserve eval`.",
    "max_memory_gb": "GPU memory budget: checked against the measured weights and the plan model's "
                     "estimate at each precision.",
    "min_recovery": "Quality floor: the lower end of task recovery's 95% interval (accuracy relative to the "
                    "source, paired over items) must reach this; 0 turns the floor off.",
    "max_kld": "Quality floor where tasks were not run: highest acceptable mean KLD against the source.",
    "plan_model": "7B-8B architecture for the VRAM plan (eval/model_configs/<name>.json).",
    "plan_context": "Context tokens per sequence in the VRAM plan.",
    "plan_concurrency": "Concurrent sequences in the VRAM plan.",
    "usd_per_kwh": "For an owned GPU: price power (W × $/kWh) plus purchase amortization instead of its "
                   "listed hourly rate.",
}


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def eval_command(
    base_url: str = typer.Option(..., "--base-url", help=HELP["base_url"]),
    api_key: str | None = typer.Option(None, "--api-key", envvar="QUANTSERVE_API_KEY", help=HELP["api_key"]),
    scenario: str = typer.Option("support-chat", "--scenario", help=HELP["scenario"]),
    models: str | None = typer.Option(None, "--models", help=HELP["models"]),
    sweep: str = typer.Option("concurrency=1,4", "--sweep", help=HELP["sweep"]),
    requests: int = typer.Option(DEFAULT_REQUESTS, "--requests", min=1, help=HELP["requests"]),
    duration: float | None = typer.Option(None, "--duration", min=0.1, help=HELP["duration"]),
    warmup: int = typer.Option(2, "--warmup", min=0, help=HELP["warmup"]),
    timeout: float = typer.Option(120.0, "--timeout", min=0.1, help=HELP["timeout"]),
    seed: int = typer.Option(0, "--seed", help=HELP["seed"]),
    max_tokens: int | None = typer.Option(None, "--max-tokens", min=1, help=HELP["max_tokens"]),
    slo: str | None = typer.Option(None, "--slo", help=HELP["slo"] + " Default: eval/slo.yaml."),
    gpu: str | None = typer.Option(None, "--gpu", help=HELP["gpu"]),
    out: Path | None = typer.Option(None, "--out", help=HELP["out"]),
    variants: Path = typer.Option(Path("variants"), "--variants", help=HELP["variants"]),
    source_model: str | None = typer.Option(None, "--source-model", help=HELP["source_model"]),
    tasks: bool = typer.Option(True, "--tasks/--no-tasks", help=HELP["tasks"]),
    tasks_file: Path | None = typer.Option(None, "--tasks-file", help=HELP["tasks_file"]),
) -> None:
    """Measure latency, throughput, goodput and task accuracy of served models.

    Writes records.jsonl (every request) and eval.json into the run folder; then run `quantserve report`.
    """
    from quantserve.eval.runner import EvalConfig, run_eval

    run_eval(EvalConfig(
        base_url=base_url, api_key=api_key, scenario=scenario, models=_split(models), sweep=sweep,
        num_requests=requests, duration_s=duration, warmup=warmup, timeout_s=timeout, seed=seed,
        max_tokens=max_tokens, slo=slo, gpu=gpu, out=out, variants_dir=variants, source_model=source_model,
        tasks=tasks, tasks_file=tasks_file,
    ))


def report_command(
    run_dir: Path = typer.Argument(Path("runs/latest"), help=HELP["run_dir"]),
    variants: Path | None = typer.Option(None, "--variants", help=HELP["variants"] + " Default: the "
                                         "folder recorded in eval.json."),
    max_memory_gb: float | None = typer.Option(None, "--max-memory-gb", help=HELP["max_memory_gb"]),
    slo: str | None = typer.Option(None, "--slo", help=HELP["slo"] + " Default: the run's."),
    min_recovery: float = typer.Option(DEFAULT_MIN_RECOVERY, "--min-recovery", min=0, help=HELP["min_recovery"]),
    max_kld: float = typer.Option(DEFAULT_MAX_KLD, "--max-kld", min=0, help=HELP["max_kld"]),
    plan_model: str = typer.Option(DEFAULT_PLAN_MODEL, "--plan-model", help=HELP["plan_model"]),
    plan_context: int = typer.Option(4096, "--plan-context", min=1, help=HELP["plan_context"]),
    plan_concurrency: int = typer.Option(4, "--plan-concurrency", min=1, help=HELP["plan_concurrency"]),
    gpu: str | None = typer.Option(None, "--gpu", help=HELP["gpu"] + " Default: the run's."),
    usd_per_kwh: float | None = typer.Option(None, "--usd-per-kwh", help=HELP["usd_per_kwh"]),
) -> None:
    """Build report.json, report.md and a self-contained report.html from a run folder and the manifests."""
    from quantserve.eval.report import ReportConstraints, build_report

    constraints = ReportConstraints(max_memory_gb=max_memory_gb, slo=slo, min_recovery=min_recovery, max_kld=max_kld,
                                    plan_model=plan_model, plan_context_len=plan_context,
                                    plan_concurrency=plan_concurrency, gpu=gpu, usd_per_kwh=usd_per_kwh)
    typer.echo(str(build_report(run_dir, variants, constraints)))


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
    app.command("report")(report_command)
