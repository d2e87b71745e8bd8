"""The report's tables as plain (headers, rows) so report.md and report.html show the same cells."""

from __future__ import annotations

import html
from typing import Any

from quantserve.eval.report_schema import CI, Dist, PointRow, Report, VariantRow

Table = tuple[list[str], list[list[str]]]
NONE = "–"
TOO_SMALL = "n too small"


def fmt(value: float | None, spec: str = ".2f") -> str:
    return NONE if value is None else format(value, spec)


def with_ci(value: float | None, ci: CI | None, spec: str = ".2f") -> str:
    """GuideLLM's form: value ± half-width of the 95% interval; the bare value where there is none."""
    if value is None:
        return NONE
    return f"{value:{spec}} ± {ci.half_width:{spec}}" if ci else format(value, spec)


def _p(dist: Dist | None, stat: str, spec: str = ".0f") -> str:
    if dist is None:
        return NONE
    value = getattr(dist, stat)
    if value is None:  # the sample cannot back this percentile (report_schema.Dist)
        return TOO_SMALL
    return with_ci(value, getattr(dist, f"{stat}_ci", None), spec)


def runtime_cell(row: VariantRow) -> str:
    scheme = row.scheme or NONE
    return f"{row.runtime} / {scheme}" if row.runtime else scheme


def servable_cell(row: VariantRow) -> str:
    if row.latency is not None:
        return f"yes ({row.dtype})" if row.dtype else "yes"
    if row.servable_here:
        return f"yes ({row.unavailable_reason})" if row.unavailable_reason else "yes"
    return f"no: {row.unavailable_reason}" if row.unavailable_reason else "no"


def summary_table(report: Report) -> Table:
    headers = ["variant", "runtime / format", "bits", "size MB", "size ratio", "PPL ratio", "KLD", "top-1", "task acc",
               "recovery", "TTFT p50 ms", "TTFT p99 ms", "TPOT p50 ms", "output tok/s", "$/1M tok",
               "servable here"]
    rows = []
    for v in report.variants:
        lat, q = v.latency, v.quality
        rows.append([
            v.name + (" (source)" if v.is_source else ""), runtime_cell(v), fmt(v.bits, "d"),
            fmt(v.size_bytes / 1e6 if v.size_bytes else None, ".1f"), fmt(v.size_ratio, ".3f"),
            fmt(q.ppl_ratio, ".3f"), fmt(q.kld_mean, ".4f"), fmt(q.top1_agreement, ".3f"),
            with_ci(q.task_accuracy, q.task_accuracy_ci), with_ci(q.recovery, q.recovery_ci),
            _p(lat.ttft_ms if lat else None, "p50"), _p(lat.ttft_ms if lat else None, "p99"),
            _p(lat.tpot_ms if lat else None, "p50", ".1f"),
            with_ci(v.throughput.output_tok_s, v.throughput.output_tok_s_ci, ".1f") if v.throughput else NONE,
            fmt(v.cost.usd_per_1m_output_tokens if v.cost else None, ".3g"), servable_cell(v),
        ])
    return headers, rows


def _slo_cell(point: PointRow, has_slo: bool) -> str:
    if not has_slo:
        return NONE
    return "met" if not point.slo_violations else "; ".join(point.slo_violations)


def points_table(variant: VariantRow, has_slo: bool) -> Table:
    headers = ["load", "n (ok / sent)", "errors", "TTFT p50 / p99 ms", "TPOT p50 / p99 ms", "ITL p50 / p99 ms",
               "E2E p50 / p99 ms", "output tok/s", "req/s", "goodput req/s", "$/1M tok", "SLO (p-values)"]
    rows = []
    for p in variant.by_concurrency:
        lat = p.latency

        def pair(name: str, spec: str = ".0f", lat: Any = lat) -> str:
            dist = getattr(lat, name) if lat else None
            return f"{_p(dist, 'p50', spec)} / {_p(dist, 'p99', spec)}"

        rows.append([
            p.point, f"{p.completed} / {p.requests}", f"{p.error_rate:.0%}", pair("ttft_ms"),
            pair("tpot_ms", ".1f"), pair("itl_ms", ".1f"), pair("e2e_ms"),
            with_ci(p.throughput.output_tok_s, p.throughput.output_tok_s_ci, ".1f") if p.throughput else NONE,
            fmt(p.throughput.request_s if p.throughput else None, ".2f"), fmt(p.goodput_rps, ".2f"),
            fmt(p.cost.usd_per_1m_output_tokens if p.cost else None, ".3g"), _slo_cell(p, has_slo),
        ])
    return headers, rows


def quality_table(report: Report) -> Table:
    headers = ["variant", "method", "scheme", "bits", "PPL", "PPL ratio", "KLD mean", "top-1 agreement",
               "task accuracy (n)", "accuracy by kind", "vs source: only source / only variant right, p",
               "recovery", "quality floor"]
    rows = []
    for v in report.variants:
        q = v.quality
        kinds = ", ".join(f"{k} {a:.2f}" for k, a in (q.task_accuracy_by_kind or {}).items()) or NONE
        accuracy = with_ci(q.task_accuracy, q.task_accuracy_ci) + (f" ({q.task_items})" if q.task_items else "")
        rows.append([v.name, v.method or NONE, v.scheme or NONE, fmt(v.bits, "d"), fmt(q.ppl, ".2f"),
                     fmt(q.ppl_ratio, ".3f"), fmt(q.kld_mean, ".4f"), fmt(q.top1_agreement, ".3f"),
                     accuracy, kinds, _paired_cell(v), with_ci(q.recovery, q.recovery_ci),
                     _floor_cell(report, v)])
    return headers, rows


def _paired_cell(v: VariantRow) -> str:
    q = v.quality
    if v.is_source or q.paired_p_value is None:
        return NONE
    return (f"{q.only_source_right} / {q.only_variant_right}, p = {q.paired_p_value:.2g} "
            f"(McNemar, {q.paired_items} items)")


def _floor_cell(report: Report, v: VariantRow) -> str:
    verdict = report.recommendation.quality_floor.get(v.name)
    if verdict is None or verdict.passed is None:
        return NONE
    return ("pass: " if verdict.passed else "fail: ") + verdict.reason


def vram_table(plan: dict[str, Any]) -> Table:
    gpus = plan["gpus_gb"]
    headers = ["precision", "effective bits", "weights GiB", "KV cache GiB", "overhead GiB", "total GiB",
               *[f"{gb} GB" for gb in gpus], "max context @ 16 GB"]
    rows = []
    for r in plan["rows"]:
        rows.append([r["precision"], f"{r['effective_bits']:.3g}", f"{r['weights_gb']:.2f}",
                     f"{r['kv_cache_gb']:.2f}", f"{r['overhead_gb']:.2f}", f"{r['total_gb']:.2f}",
                     *["fits" if r["fits"][str(gb)] else "no" for gb in gpus],
                     f"{r['max_context_16gb']:,}" if r["max_context_16gb"] else "does not fit"])
    return headers, rows


def time_table(report: Report) -> Table:
    """At the reference point: mean time per request in each phase, how near decode runs to the memory wall,
    what limits it, and what would help next."""
    headers = ["variant", "point", "n", "queue ms", "prefill ms", "decode ms", "gateway ms", "decode vs bandwidth",
               "bottleneck", "what would help next"]
    rows = []
    for v in report.variants:
        at = next((p for p in v.by_concurrency if p.point == v.reference_point), None)
        t = at.time if at else None
        if at is None or t is None:
            continue
        rows.append([v.name, at.point, fmt(t.requests, "d"), fmt(t.queue_ms, ".0f"), fmt(t.prefill_ms, ".0f"),
                     fmt(t.decode_ms, ".0f"), fmt(t.gateway_ms, ".2f"), fmt(t.decode_efficiency, ".0%"),
                     t.bottleneck, t.advice])
    return headers, rows


def target_table(report: Report) -> Table:
    headers = ["variant", "TTFT p99 and TPOT p99 under 100 ms?"]
    return headers, [[v.name, v.target_100ms] for v in report.variants if v.target_100ms]


def md_table(table: Table) -> str:
    headers, rows = table

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(headers), "|" + "---|" * len(headers), *(line(r) for r in rows)])


def html_table(table: Table) -> str:
    headers, rows = table
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
