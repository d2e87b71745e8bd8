"""`quantserve report RUN_DIR`: report.json, report.md and a self-contained report.html.

Everything shown is computed from the run folder (records.jsonl, eval.json) and the variants'
manifests; what was not measured stays empty, with the reason beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from quantserve.errors import UserError
from quantserve.eval.recommend import DEFAULT_MAX_KLD, DEFAULT_MIN_RECOVERY, recommend
from quantserve.eval.records import RECORDS_NAME, read_records
from quantserve.eval.render import to_html, to_markdown
from quantserve.eval.report_rows import build_rows, plan_precisions, reference_point
from quantserve.eval.report_schema import Report, VariantRow
from quantserve.eval.runner import log, read_eval
from quantserve.eval.slo import parse_slo, slo_from_dict, slo_to_dict
from quantserve.eval.vram import DEFAULT_PLAN_MODEL, vram_plan
from quantserve.manifest import Manifest, list_manifests
from quantserve.prices import HardwareRow, load_price_table


@dataclass(frozen=True)
class ReportConstraints:
    max_memory_gb: float | None = None  # GPU memory budget for the deployment
    slo: str | None = None  # "ttft_p99=200ms,..."; None: the SLO the run was measured against
    # quality floor: recovery's 95% CI lower bound, or mean KLD where tasks were not run; 0 turns it off
    min_recovery: float = DEFAULT_MIN_RECOVERY
    max_kld: float = DEFAULT_MAX_KLD
    plan_model: str = DEFAULT_PLAN_MODEL  # eval/model_configs/<name>.json
    plan_context_len: int = 4096
    plan_concurrency: int = 4
    gpu: str | None = None  # price row; None: the run's --gpu
    usd_per_kwh: float | None = None  # owned GPUs: price power + amortization instead of the listed rate

    def check(self) -> None:
        if self.max_memory_gb is not None and self.max_memory_gb <= 0:
            raise UserError(f"--max-memory-gb must be positive, got {self.max_memory_gb:g}")
        if not 0 <= self.min_recovery <= 2:
            raise UserError(f"--min-recovery is a ratio like 0.95 (0 turns the floor off), got {self.min_recovery:g}")
        if self.max_kld < 0:
            raise UserError(f"--max-kld must not be negative, got {self.max_kld:g}")
        if self.usd_per_kwh is not None and self.usd_per_kwh < 0:
            raise UserError("--usd-per-kwh must not be negative")


def _hardware_dict(row: HardwareRow, usd_per_kwh: float | None) -> dict[str, Any]:
    return {**row.model_dump(), "usd_per_hour": row.effective_usd_per_hour(usd_per_kwh),
            "listed_usd_per_hour": row.usd_per_hour, "usd_per_kwh": usd_per_kwh}


def _notes(eval_doc: dict[str, Any], manifests: list[Manifest], variants_dir: Path | None, ref: str | None,
           hardware: HardwareRow | None, c: ReportConstraints, records_missing: int) -> list[str]:
    notes = list(eval_doc.get("notes", []))
    if ref:
        notes.append(f"Latency, throughput and cost columns are at {ref}, the heaviest load point every "
                     "model ran; every point is listed under 'Latency and throughput by load point'.")
    if hardware:
        how = (f"{hardware.watts:g} W × ${c.usd_per_kwh:g}/kWh plus purchase amortization"
               if c.usd_per_kwh is not None and hardware.kind == "owned" else "the listed hourly price")
        notes.append(f"$ per 1M output tokens = {hardware.label} $/hour ({how}; {hardware.source}) ÷ "
                     "measured output tokens per hour at that load: the hardware is paid for whether busy "
                     "or not.")
    else:
        notes.append("No --gpu price row was given, so cost columns are empty.")
    if not manifests:
        notes.append(f"No manifests found in {variants_dir or '(no variants folder)'}: size, perplexity, KLD "
                     "and top-1 columns are empty.")
    else:
        q = next((m.quality for m in manifests if m.quality), None)
        if q:
            notes.append(f"PPL, KLD and top-1 agreement come from the manifests: measured in transformers "
                         f"against the source on {q.tokens} held-out tokens ({q.heldout_file}).")
    for m in manifests:
        if m.mixed_precision:
            mp = m.mixed_precision
            layers = sum(len(u.layers) for u in mp.promoted)
            top = ", ".join(f"{u.layers[0].removeprefix('model.')} ({u.kld:.3f})" for u in mp.most_sensitive[:3])
            notes.append(f"{m.name} keeps {layers} Linear layers at {mp.promoted_to} and the rest at INT4, up to "
                         f"{mp.budget_ratio:g} of the source's size (INT4 alone: {mp.int4_ratio:.3f}). The layers "
                         f"were picked by the KLD each causes alone at INT4 ({mp.probe}, {mp.sensitivity_tokens} "
                         f"tokens) per extra byte; the most sensitive: {top}. Its manifest lists them all.")
    dtypes = {name: info for name, info in (eval_doc.get("serving") or {}).items() if info.get("dtype")}
    if dtypes:
        chosen = ", ".join(f"{name} {info['dtype']}" + (" (set in the serve config)" if info.get("dtype_from") ==
                                                         "config" else "") for name, info in dtypes.items())
        notes.append("Each served model ran in the dtype `quantserve probe` measured fastest on this machine for "
                     f"its checkpoint format, unless the serve config set one: {chosen}.")
    if not eval_doc.get("source_model"):
        notes.append("The source model was not among the measured models (pass --source-model to "
                     "`quantserve eval`), so task recovery is unavailable.")
    if records_missing:
        notes.append(f"{records_missing} completed requests had no usage chunk; their output tokens were "
                     "counted from content chunks.")
    if c.slo is not None:
        notes.append("The SLO was set at report time; goodput and SLO verdicts were recomputed from the "
                     "records.")
    return notes


def _sample_notes(rows: list[VariantRow]) -> list[str]:
    """How the intervals were made, and where the sample was too small to back a figure."""
    notes = ["± is the half-width of a 95% interval: a seeded percentile bootstrap over requests for TTFT/TPOT "
             "p50 and p99 and for output tok/s, Wilson for task accuracy, a paired bootstrap over task items "
             "for recovery. The paired p-value is an exact McNemar test against the source on the same items."]
    small = [(p.completed, p.point, v.name) for v in rows for p in v.by_concurrency if 0 < p.completed < 100]
    if small:
        n, point, name = min(small)
        notes.append(f"{len(small)} load point(s) completed fewer than 100 requests (fewest: {n} at {point} for "
                     f"{name}), so their p99 is shown as 'n too small'; below 10 no interval is shown. "
                     "`quantserve eval` runs 100 requests per point by default (--requests).")
    return notes


def make_report(run_dir: Path, variants_dir: Path | None = None,
                constraints: ReportConstraints | None = None) -> Report:
    c = constraints or ReportConstraints()
    c.check()
    eval_doc = read_eval(run_dir)
    slo = parse_slo(c.slo) if c.slo is not None else slo_from_dict(eval_doc.get("slo", {}))
    gpu = c.gpu or eval_doc.get("gpu")
    hardware = load_price_table().hardware(gpu) if gpu else None
    recorded = eval_doc.get("variants_dir")
    vdir = variants_dir or (Path(recorded) if recorded else None)
    if variants_dir is not None and not variants_dir.is_dir():
        raise UserError(f"--variants {variants_dir} is not a folder")
    manifests = [m for _, m in list_manifests(vdir)] if vdir else []
    records = read_records(run_dir / RECORDS_NAME)
    rows = build_rows(eval_doc, records, manifests, slo, hardware, c.usd_per_kwh)
    plan = vram_plan(c.plan_model, plan_precisions(manifests), c.plan_context_len, c.plan_concurrency)
    label = hardware.label if hardware else None
    recommendation = recommend(rows, slo, c.max_memory_gb, c.min_recovery, label, plan, c.max_kld,
                               speed_noise=_speed_noise(eval_doc.get("noise")))
    source_notes = sorted({m.source.note for m in manifests if m.source.note})
    ref = reference_point(eval_doc)
    missing_usage = sum(r.ok and r.completion_tokens is None for r in records)
    return Report(
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        run_dir=str(run_dir.resolve()),
        scenario=eval_doc.get("scenario", ""),
        sweep=eval_doc.get("sweep", {}),
        reference_point=ref,
        hardware=_hardware_dict(hardware, c.usd_per_kwh) if hardware else None,
        slo=slo_to_dict(slo),
        recommendation=recommendation,
        quality_note=" ".join(source_notes) or None,
        notes=_notes(eval_doc, manifests, vdir, ref, hardware, c, missing_usage) + _sample_notes(rows),
        variants=rows,
        vram_plan=plan,
        isolation=eval_doc.get("isolation"),
        memory_bandwidth_gbs=(eval_doc.get("memory_bandwidth") or {}).get("bytes_per_s", 0) / 1e9 or None,
        noise=eval_doc.get("noise"),
    )


def _speed_noise(noise: dict[str, Any] | None) -> float | None:
    """The largest move of the source's output tok/s between its two runs, over the load points."""
    drifts = [abs(r["drift"]) for r in (noise or {}).get("rows", [])
              if r.get("figure") == "output tok/s" and r.get("drift") is not None]
    return max(drifts) if drifts else None


def build_report(run_dir: Path, variants_dir: Path | None = None,
                 constraints: ReportConstraints | None = None) -> Path:
    """Write report.json, report.md and report.html into run_dir; returns the report.html path."""
    from quantserve.eval.plots import render_plots

    run_dir = Path(run_dir)
    report = make_report(run_dir, variants_dir, constraints)
    log(f"report: {len(report.variants)} variants, recommendation: {report.recommendation.variant or 'none'}")
    (run_dir / "report.json").write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n")
    (run_dir / "report.md").write_text(to_markdown(report))
    html_path = run_dir / "report.html"
    html_path.write_text(to_html(report, render_plots(report)))
    log(f"wrote {run_dir / 'report.json'}, report.md, report.html")
    return html_path
