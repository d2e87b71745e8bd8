"""`quantserve eval`: check the endpoint, sweep load over each model, score tasks, write the run folder.

The run folder holds records.jsonl (every measured request) and eval.json (config, per model per
load point metrics, task scores); `quantserve report` builds the report from those and the manifests.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel, Field

import quantserve
from quantserve.atomic import replace_file
from quantserve.errors import UserError
from quantserve.eval.bandwidth import measure_bandwidth
from quantserve.eval.breakdown import Scrape, scrape
from quantserve.eval.endpoint import Endpoint, check_models
from quantserve.eval.loadgen import DEFAULT_REQUESTS, LoadLimits, LoadPoint, make_client, parse_sweep, run_point
from quantserve.eval.metrics import compute_metrics
from quantserve.eval.records import RECORDS_NAME, RequestRecord, RunClock, append_records
from quantserve.eval.scenarios import ScenarioItem, load_scenario, scenario_path
from quantserve.eval.slo import Slo, format_slo, load_default_slo, parse_slo, slo_to_dict
from quantserve.eval.tasks import Task, default_tasks_path, load_tasks, run_tasks
from quantserve.prices import HardwareRow, load_price_table

EVAL_NAME = "eval.json"
SCHEMA_VERSION = 1


class EvalConfig(BaseModel):
    base_url: str
    api_key: str | None = None
    scenario: str = "support-chat"  # a name under prompts/scenarios/ or a .jsonl path
    models: list[str] = Field(default_factory=list)  # empty: every model the endpoint serves
    sweep: str = "concurrency=1,4"
    # per load point, warm-up excluded: 100 is the fewest that backs a p99 (eval/stats.py min_samples)
    num_requests: int = Field(DEFAULT_REQUESTS, gt=0)
    duration_s: float | None = Field(None, gt=0)  # per load point cap; None: run to num_requests
    warmup: int = Field(2, ge=0)
    timeout_s: float = Field(120.0, gt=0)
    seed: int = 0
    max_tokens: int | None = None  # overrides each scenario item's max_tokens
    temperature: float | None = 0.0
    slo: str | None = None  # "ttft_p99=200ms,itl_p99=50ms"; None uses eval/slo.yaml
    gpu: str | None = None  # a row of the price table (quantserve/prices.yaml): the hardware the endpoint runs on
    out: Path | None = None  # None: runs/<UTC timestamp>/
    variants_dir: Path | None = Path("variants")  # manifests for the report
    source_model: str | None = None  # served name of the unquantized model; None: guessed
    tasks: bool = True
    tasks_file: Path | None = None  # None: prompts/tasks/support_tasks.jsonl when present
    task_max_tokens: int = 24  # answers are a word or a short sentence; 16 cut off quoted extractions
    # Tasks in flight at once: the 480 items on the default's source took 68 s at 8, 58 s at 16, 53 s at 32 (2-core
    # AVX-512, bf16), with the same answers item by item; a task pass measures quality, not latency.
    task_parallel: int = Field(default=32, ge=1)
    not_served: dict[str, str] = Field(default_factory=dict)  # variants the run could not serve -> why
    # the engine's own /metrics (vLLM): queue / prefill / decode time per load point; None for an endpoint whose
    # engines are out of reach
    engine_metrics_url: str | None = None


def log(message: str) -> None:
    print(f"[{datetime.now():%H:%M:%S}] {message}", flush=True)


def default_run_dir(root: Path = Path("runs")) -> Path:
    return root / datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def update_latest(run_dir: Path) -> Path | None:
    """Point runs/latest at run_dir (relative link, swapped atomically) when run_dir sits in a `runs`
    folder; a run written elsewhere leaves its parent alone, and a real `latest` folder is never replaced."""
    link = run_dir.parent / "latest"
    if run_dir.parent.name != "runs" or (link.exists() and not link.is_symlink()):
        return None
    return replace_file(link, lambda tmp: tmp.symlink_to(run_dir.name, target_is_directory=True))


def guess_source(models: list[str], variant_names: set[str], source_names: set[str]) -> str | None:
    """The served model that is no variant but names the variants' source, or whose name prefixes them."""
    others = [m for m in models if m not in variant_names]
    for model in others:
        short = {s.rsplit("/", 1)[-1].lower() for s in source_names}
        if model in source_names or model.lower() in short:
            return model
        if any(v.startswith(model + "-") for v in variant_names):
            return model
    return others[0] if len(others) == 1 and variant_names else None


def _manifest_names(variants_dir: Path | None) -> tuple[set[str], set[str]]:
    if variants_dir is None:
        return set(), set()
    from quantserve.manifest import list_manifests

    found = list_manifests(variants_dir)
    # serve hosts a variant's source under its folder name; users may also call it by source.model
    sources = {m.source.model for _, m in found} | {Path(m.source.path).name for _, m in found}
    return {m.name for _, m in found}, sources


@dataclass(frozen=True)
class _Plan:
    """Everything checked before the first request, so bad input fails fast and offline."""

    slo: Slo
    price_row: HardwareRow | None
    points: list[LoadPoint]
    items: list[ScenarioItem]
    tasks: list[Task] | None
    tasks_file: Path | None
    endpoint: Endpoint
    run_dir: Path
    limits: LoadLimits
    notes: list[str]


def _plan(cfg: EvalConfig) -> _Plan:
    notes: list[str] = []
    tasks, tasks_file = None, None
    if cfg.tasks:
        tasks_file = cfg.tasks_file or default_tasks_path()
        if cfg.tasks_file is None and not tasks_file.is_file():
            notes.append(f"task accuracy not measured: {tasks_file} does not exist")
            tasks_file = None
        else:
            tasks = load_tasks(tasks_file)
    run_dir = cfg.out or default_run_dir()
    if (run_dir / EVAL_NAME).exists():
        raise UserError(f"{run_dir} already holds a run (eval.json); choose another --out")
    return _Plan(
        slo=parse_slo(cfg.slo) if cfg.slo is not None else load_default_slo(),
        price_row=load_price_table().hardware(cfg.gpu) if cfg.gpu else None,
        points=parse_sweep(cfg.sweep),
        items=load_scenario(cfg.scenario),
        tasks=tasks, tasks_file=tasks_file,
        endpoint=Endpoint.of(cfg.base_url, cfg.api_key),
        run_dir=run_dir,
        limits=LoadLimits(num_requests=cfg.num_requests, duration_s=cfg.duration_s, warmup=cfg.warmup,
                          timeout_s=cfg.timeout_s, seed=cfg.seed, temperature=cfg.temperature,
                          max_tokens=cfg.max_tokens),
        notes=notes,
    )


async def _measure_model(client: httpx.AsyncClient, cfg: EvalConfig, plan: _Plan, model: str,
                         clock: RunClock) -> dict[str, Any]:
    """Every load point of one model (records appended to records.jsonl as they finish), then its tasks."""
    result: dict[str, Any] = {"points": [], "tasks": None}
    for point in plan.points:
        cap = f" or {cfg.duration_s:g}s" if cfg.duration_s is not None else ""
        log(f"{model} {point.label}: {cfg.warmup} warm-up + up to {cfg.num_requests} requests{cap}")
        scrapes: list[Scrape | None] = []
        mark = functools.partial(_scrape_into, scrapes, client, cfg.engine_metrics_url)
        records = await run_point(client, plan.endpoint, model, cfg.scenario, plan.items, point, plan.limits,
                                  clock, after_warmup=mark)
        await mark()
        append_records(plan.run_dir / RECORDS_NAME, records)
        m = compute_metrics(records, plan.slo)
        result["points"].append({"point": point.label, "mode": point.mode, "value": point.value,
                                 "metrics": asdict(m), "engine_phases": _phases(scrapes, records)})
        p99 = f"{m.ttft_ms.p99:.0f}" if m.ttft_ms and m.ttft_ms.backed("p99") else "(n too small)"
        ttft = f"{m.ttft_ms.p50:.0f}/{p99} ms" if m.ttft_ms else "n/a"
        log(f"{model} {point.label}: {m.completed}/{m.requests} ok, TTFT p50/p99 {ttft}, "
            f"{m.output_throughput:.1f} tok/s, goodput {m.goodput_rps or 0:.2f} req/s")
        if m.failed:
            log(f"  {m.failed} failed; most common: {next(iter(m.errors))}")
    if plan.tasks:
        log(f"{model}: {len(plan.tasks)} tasks (temperature 0, max_tokens {cfg.task_max_tokens})")
        scores = await run_tasks(client, plan.endpoint, model, plan.tasks, cfg.task_max_tokens,
                                 parallel=cfg.task_parallel, timeout_s=cfg.timeout_s)
        result["tasks"] = scores.to_dict()
        log(f"{model}: task accuracy {scores.accuracy:.1%} ({scores.errors} request errors)")
    return result


async def _scrape_into(scrapes: list[Scrape | None], client: httpx.AsyncClient, url: str | None) -> None:
    if url:
        scrapes.append(await scrape(client, url))


def _phases(scrapes: list[Scrape | None], records: list[RequestRecord]) -> dict[str, Any] | None:
    """The point's own [sum s, count] per vLLM phase (after minus before), and the gateway's mean time."""
    if len(scrapes) != 2 or scrapes[0] is None or scrapes[1] is None:
        return None
    before, after = scrapes
    phases: dict[str, Any] = {p: [after[p][0] - before[p][0], after[p][1] - before[p][1]] for p in after}
    own = [r.gateway_ms for r in records if r.gateway_ms is not None]
    phases["gateway_ms_mean"] = sum(own) / len(own) if own else None
    return phases


async def run_eval_async(cfg: EvalConfig) -> Path:
    plan = _plan(cfg)
    clock = RunClock()
    started = time.monotonic()
    async with make_client(plan.limits) as client:
        cards = await check_models(client, plan.endpoint, cfg.models)
        models = [c["id"] for c in cards]
        # What each model runs as (the gateway's extra /v1/models fields; None for other servers).
        serving = {c["id"]: {k: c.get(k) for k in ("runtime", "format", "dtype", "dtype_from")} for c in cards}
        if cfg.source_model and cfg.source_model not in models:
            raise UserError(f"--source-model {cfg.source_model} is not among the measured models: "
                            f"{', '.join(models)}")
        source = cfg.source_model or guess_source(models, *_manifest_names(cfg.variants_dir))
        plan.run_dir.mkdir(parents=True, exist_ok=True)
        (plan.run_dir / RECORDS_NAME).unlink(missing_ok=True)
        log(f"eval → {plan.run_dir}: {len(models)} model(s) × {len(plan.points)} load point(s), scenario "
            f"{cfg.scenario} ({len(plan.items)} prompts), SLO {format_slo(plan.slo)}")
        results = {model: await _measure_model(client, cfg, plan, model, clock) for model in models}
    eval_doc = {
        "schema_version": SCHEMA_VERSION,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "quantserve_version": quantserve.__version__,
        "config": {**cfg.model_dump(mode="json", exclude={"api_key"}), "api_key_set": bool(cfg.api_key)},
        "base_url": plan.endpoint.base_url,
        "scenario": cfg.scenario,
        "scenario_file": str(scenario_path(cfg.scenario).resolve()),
        "sweep": {"mode": plan.points[0].mode, "values": [p.value for p in plan.points]},
        "slo": slo_to_dict(plan.slo),
        "gpu": cfg.gpu,
        "price_row": plan.price_row.model_dump() if plan.price_row else None,
        "variants_dir": str(cfg.variants_dir.resolve()) if cfg.variants_dir else None,
        "source_model": source,
        "models": models,
        "serving": serving,
        # `quantserve run` measures each model alone and says so (eval/isolation.py); an endpoint given here
        # serves whatever it serves, neighbours included
        "isolation": "all models up together: they share the machine",
        "memory_bandwidth": asdict(measure_bandwidth()),
        "not_served": cfg.not_served,
        "tasks_file": str(plan.tasks_file.resolve()) if plan.tasks_file else None,
        "results": results,
        "notes": plan.notes,
        "wall_time_s": time.monotonic() - started,
    }
    (plan.run_dir / EVAL_NAME).write_text(json.dumps(eval_doc, indent=2) + "\n")
    update_latest(plan.run_dir)
    log(f"done in {time.monotonic() - started:.0f}s: {plan.run_dir / EVAL_NAME}; "
        f"next: quantserve report {plan.run_dir}")
    return plan.run_dir


def run_eval(cfg: EvalConfig) -> Path:
    """Synchronous entry for scripts and the CLI; inside a running event loop use run_eval_async."""
    return asyncio.run(run_eval_async(cfg))


def read_eval(run_dir: Path) -> dict[str, Any]:
    path = run_dir / EVAL_NAME
    if not path.is_file():
        raise UserError(f"{run_dir} is not an eval run folder (no {EVAL_NAME}); run `quantserve eval` first")
    return json.loads(path.read_text())
