"""One VariantRow per model: manifests (size, quality) joined with the run (records, task scores).

Speed numbers are recomputed from records.jsonl here, so a different --slo at report time only
changes goodput and the SLO verdicts, never the measurements.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict
from typing import Any

from quantserve.eval.breakdown import HISTOGRAMS, breakdown
from quantserve.eval.metrics import Distribution, Metrics, compute_metrics, slo_violations
from quantserve.eval.records import RequestRecord
from quantserve.eval.report_schema import (
    CI,
    Cost,
    Dist,
    Latency,
    PointRow,
    QualityRow,
    Throughput,
    TimeRow,
    VariantRow,
)
from quantserve.eval.slo import Slo
from quantserve.eval.tasks import TaskScores, task_quality
from quantserve.eval.token_cost import token_cost
from quantserve.eval.vram import DEFAULT_PRECISIONS, Precision, precision_of
from quantserve.manifest import Manifest
from quantserve.prices import HardwareRow

SOURCE_PRECISION = DEFAULT_PRECISIONS[0]


def _dist(d: Distribution | None) -> Dist | None:
    if d is None:
        return None
    shown = {stat: getattr(d, stat) if d.backed(stat) else None for stat in ("p50", "p90", "p95", "p99")}
    return Dist(mean=d.mean, n=d.n, p50_ci=CI.of(d.p50_ci), p99_ci=CI.of(d.p99_ci), **shown)


def _latency(m: Metrics) -> Latency | None:
    if m.completed == 0:
        return None
    return Latency(ttft_ms=_dist(m.ttft_ms), tpot_ms=_dist(m.tpot_ms), itl_ms=_dist(m.itl_ms),
                   e2e_ms=_dist(m.e2e_ms))


def _time_row(entry: dict[str, Any], output_tok_s: float, weight_bytes: int | None,
              bandwidth: float | None) -> TimeRow | None:
    phases = entry.get("engine_phases")
    if not phases:
        return None
    zero = {phase: (0.0, 0.0) for phase in HISTOGRAMS}
    after = {phase: (float(phases[phase][0]), float(phases[phase][1])) for phase in HISTOGRAMS}
    mean_gateway = phases.get("gateway_ms_mean")
    b = breakdown(zero, after, output_tok_s, weight_bytes, bandwidth,
                  [mean_gateway] if mean_gateway is not None else None)
    if b is None:
        return None
    return TimeRow(requests=b.requests, queue_ms=b.queue_s * 1000, prefill_ms=b.prefill_s * 1000,
                   decode_ms=b.decode_s * 1000, gateway_ms=b.gateway_s * 1000 if b.gateway_s is not None else None,
                   decode_efficiency=b.decode_efficiency, bottleneck=b.bottleneck, advice=b.advice)


TARGET_MS = 100.0  # the seed's "latency under 100 ms" for a customer-service chatbot


def target_sentence(points: list[PointRow]) -> str | None:
    """Whether TTFT p99 and TPOT p99 stay under 100 ms, and up to which load point (in sweep order)."""
    met: list[PointRow] = []
    first_miss: str | None = None
    for p in sorted(points, key=lambda p: p.value):
        lat = p.latency
        ttft = lat.ttft_ms.p99 if lat and lat.ttft_ms else None
        tpot = lat.tpot_ms.p99 if lat and lat.tpot_ms else None
        if ttft is None or tpot is None:
            # p99 >= p50: a median already over the target misses it without a sample that backs p99
            over = [f"{name} p50 {dist.p50:.0f} ms" for name, dist in
                    (("TTFT", lat.ttft_ms if lat else None), ("TPOT", lat.tpot_ms if lat else None))
                    if dist and dist.p50 is not None and dist.p50 >= TARGET_MS]
            if over:
                where = f"up to {met[-1].point}; missed at" if met else "missed at the lightest load measured,"
                return (f"{'under ' + format(TARGET_MS, '.0f') + ' ms ' if met else ''}{where} {p.point}: "
                        f"{' and '.join(over)}, so p99 is over {TARGET_MS:.0f} ms too (n = {p.completed} "
                        "cannot back p99 itself)")
            return (f"p99 not backed at {p.point} (n = {p.completed}; p99 needs 100 requests), so the "
                    f"{TARGET_MS:.0f} ms target cannot be judged")
        if ttft < TARGET_MS and tpot < TARGET_MS:
            met.append(p)
        else:
            first_miss = f"{p.point}: TTFT p99 {ttft:.0f} ms, TPOT p99 {tpot:.0f} ms"
            break
    if not points:
        return None
    if first_miss is None:
        return f"TTFT p99 and TPOT p99 under {TARGET_MS:.0f} ms at every load measured (up to {met[-1].point})"
    if met:
        return f"under {TARGET_MS:.0f} ms up to {met[-1].point}; missed at {first_miss}"
    return f"missed at the lightest load measured ({first_miss})"


def target_verdict(points: list[PointRow]) -> str:
    """The 100 ms verdict in a few words, for tables: up to which load both p99s stay under it."""
    met = None
    for p in sorted(points, key=lambda p: p.value):
        lat = p.latency
        ttft = lat.ttft_ms.p99 if lat and lat.ttft_ms else None
        tpot = lat.tpot_ms.p99 if lat and lat.tpot_ms else None
        if ttft is None or tpot is None:
            medians = [d.p50 for d in (lat.ttft_ms if lat else None, lat.tpot_ms if lat else None)
                       if d and d.p50 is not None]
            if any(m >= TARGET_MS for m in medians):  # p99 >= p50
                return f"yes up to {met.point}" if met else "no"
            return f"yes up to {met.point}" if met else f"not backed (n={p.completed})"
        if ttft >= TARGET_MS or tpot >= TARGET_MS:
            why = " and ".join(n for n, v in (("TTFT", ttft), ("TPOT", tpot)) if v >= TARGET_MS)
            return f"yes up to {met.point}" if met else f"no ({why} p99)"
        met = p
    return f"yes up to {met.point}" if met else "n/a"


def point_row(entry: dict[str, Any], records: list[RequestRecord], slo: Slo, hardware: HardwareRow | None,
              usd_per_kwh: float | None, weight_bytes: int | None = None,
              bandwidth: float | None = None) -> PointRow:
    m = compute_metrics(records, slo)
    cost = None
    if hardware and m.completed:
        tc = token_cost(m.output_throughput, hardware, usd_per_kwh)
        cost = Cost.model_validate(asdict(tc)) if tc else None
    return PointRow(
        point=entry["point"], mode=entry["mode"], value=entry["value"], requests=m.requests,
        completed=m.completed, failed=m.failed, error_rate=m.error_rate, latency=_latency(m),
        throughput=Throughput(output_tok_s=m.output_throughput, request_s=m.request_throughput,
                              output_tok_s_ci=CI.of(m.output_throughput_ci)) if m.completed else None,
        goodput_rps=m.goodput_rps, cost=cost, slo_violations=slo_violations(m, slo), errors=m.errors,
        time=_time_row(entry, m.output_throughput, weight_bytes, bandwidth) if m.completed else None,
    )


def reference_point(eval_doc: dict[str, Any]) -> str | None:
    """The heaviest load point every measured model ran: where throughput and $/token matter most."""
    per_model = [{p["point"]: p["value"] for p in r["points"]} for r in eval_doc["results"].values()]
    if not per_model:
        return None
    common = set(per_model[0]).intersection(*per_model[1:])
    return max(common, key=lambda label: per_model[0][label]) if common else None


def _task_scores(eval_doc: dict[str, Any], model: str | None) -> TaskScores | None:
    scores = (eval_doc["results"].get(model) or {}).get("tasks") if model else None
    return TaskScores.from_dict(scores) if scores else None


def _task_fields(scores: TaskScores | None, source: TaskScores | None) -> dict[str, Any]:
    """QualityRow's task fields: accuracy with its interval, and the paired comparison with the source."""
    tq = task_quality(scores, source) if scores else None
    if scores is None or tq is None:
        return {}
    return {"task_accuracy": scores.accuracy, "task_accuracy_by_kind": scores.by_kind, "task_items": tq.n,
            "task_accuracy_ci": CI.of(tq.accuracy), "paired_items": tq.paired if source else None,
            "only_source_right": tq.only_source_right if tq.paired else None,
            "only_variant_right": tq.only_model_right if tq.paired else None,
            "paired_p_value": tq.p_value, "recovery": tq.recovery, "recovery_ci": CI.of(tq.recovery_ci)}


def _attach_measurements(row: VariantRow, points: list[PointRow], ref: str | None) -> None:
    row.by_concurrency = points
    row.target_100ms = target_sentence(points)
    at = next((p for p in points if p.point == ref), points[-1] if points else None)
    if at is None:
        return
    row.reference_point = at.point
    if at.requests == 0:
        row.unavailable_reason = f"no records for {at.point} in records.jsonl"
        return
    if at.completed == 0:
        top = next(iter(at.errors), "unknown error")
        row.unavailable_reason = f"all {at.requests} requests failed at {at.point}: {top}"
        return
    row.latency, row.throughput, row.cost = at.latency, at.throughput, at.cost
    row.goodput_rps = at.goodput_rps
    row.servable_here = True


def build_rows(eval_doc: dict[str, Any], records: list[RequestRecord], manifests: list[Manifest], slo: Slo,
               hardware: HardwareRow | None, usd_per_kwh: float | None) -> list[VariantRow]:
    by_point: dict[tuple[str, str], list[RequestRecord]] = defaultdict(list)
    for r in records:
        by_point[(r.model, r.point)].append(r)
    ref = reference_point(eval_doc)
    weights = {m.name: m.weight_bytes for m in manifests}
    if manifests and eval_doc.get("source_model"):
        weights[eval_doc["source_model"]] = manifests[0].source.weight_bytes
    bandwidth = (eval_doc.get("memory_bandwidth") or {}).get("bytes_per_s")
    measured = {
        model: [point_row(e, by_point[(model, e["point"])], slo, hardware, usd_per_kwh, weights.get(model),
                          bandwidth)
                for e in result["points"]]
        for model, result in eval_doc["results"].items()
    }
    source_name = eval_doc.get("source_model")
    source_scores = _task_scores(eval_doc, source_name)
    rows: list[VariantRow] = []

    if source_name or manifests:
        rows.append(_source_row(source_name, manifests, source_scores))
    for manifest in manifests:
        q = manifest.quality
        rows.append(VariantRow(
            name=manifest.name, runtime=manifest.runtime, method=manifest.method, scheme=manifest.scheme,
            bits=manifest.bits,
            size_bytes=manifest.weight_bytes, size_ratio=manifest.size_ratio,
            servable_here=manifest.servable_here, servable_reason=manifest.servable_reason,
            quality=QualityRow(
                ppl=q.ppl if q else None, ppl_ratio=q.ppl_ratio if q else None,
                kld_mean=q.kld_mean if q else None, top1_agreement=q.top1_agreement if q else None,
                **_task_fields(_task_scores(eval_doc, manifest.name), source_scores)),
            plan_precision=precision_of(manifest.variant, manifest.scheme, manifest.bits,
                                        manifest.group_size, manifest.recipe).label,
        ))
    serving, not_served = eval_doc.get("serving") or {}, eval_doc.get("not_served") or {}
    for row in rows:
        info = serving.get(row.name) or {}
        row.dtype, row.dtype_from = info.get("dtype"), info.get("dtype_from")
        row.runtime = info.get("runtime") or row.runtime or ("vllm" if row.is_source else None)
        if row.name in not_served:
            row.servable_here, row.servable_reason = False, not_served[row.name]
    known = {row.name for row in rows}
    for model in eval_doc["results"]:
        if model not in known:
            info = serving.get(model) or {}
            rows.append(VariantRow(name=model, servable_reason="measured at the endpoint; no manifest",
                                   runtime=info.get("runtime"),
                                   dtype=info.get("dtype"), dtype_from=info.get("dtype_from"),
                                   quality=QualityRow(**_task_fields(_task_scores(eval_doc, model),
                                                                     source_scores))))
    for row in rows:
        if row.name in measured:
            _attach_measurements(row, measured[row.name], ref)
        elif not row.servable_here:
            row.unavailable_reason = row.servable_reason or "not served in this run"
        else:
            row.unavailable_reason = "not measured in this run (not served or not in --models)"
    return rows


def _source_row(name: str | None, manifests: list[Manifest], scores: TaskScores | None) -> VariantRow:
    src = manifests[0].source if manifests else None
    ppl_source = next((m.quality.ppl_source for m in manifests if m.quality), None)
    bits = 32 if src and src.dtype in ("float32", "fp32") else 16
    return VariantRow(
        name=name or (src.model if src else "source"), is_source=True, method="source",
        scheme=src.dtype if src else None,
        bits=bits, size_bytes=src.weight_bytes if src else None, size_ratio=1.0 if src else None,
        servable_reason="" if name else "the source model was not served in this run",
        quality=QualityRow(
            ppl=ppl_source, ppl_ratio=1.0 if ppl_source else None, kld_mean=0.0 if ppl_source else None,
            top1_agreement=1.0 if ppl_source else None, **_task_fields(scores, scores)),
        plan_precision=SOURCE_PRECISION.label,
    )


def plan_precisions(manifests: list[Manifest]) -> list[Precision]:
    """The VRAM plan's rows: source precision plus each distinct recipe; the defaults without manifests."""
    if not manifests:
        return list(DEFAULT_PRECISIONS)
    found: dict[str, Precision] = {SOURCE_PRECISION.label: SOURCE_PRECISION}
    for m in manifests:
        p = precision_of(m.variant, m.scheme, m.bits, m.group_size, m.recipe)
        found.setdefault(p.label, p)
    return list(found.values())
