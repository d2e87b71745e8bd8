"""report.md and report.html from one Report: same sections, same tables (eval/tables.py)."""

from __future__ import annotations

import html
from typing import Any

from quantserve.eval.plots import PLOTS
from quantserve.eval.report_schema import Report
from quantserve.eval.slo import format_slo, slo_from_dict
from quantserve.eval.tables import (
    Table,
    html_table,
    md_table,
    points_table,
    quality_table,
    summary_table,
    target_table,
    time_table,
    vram_table,
)

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;
color:#222;line-height:1.45}
table{border-collapse:collapse;margin:.8em 0;font-size:.86em}th,td{border:1px solid #ccc;padding:.3em .5em;
text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.note{background:#fff8e1;border-left:4px solid #f0b400;padding:.5em .8em;margin:.6em 0}
.rec{background:#eef6ee;border-left:4px solid #2e7d32;padding:.6em .9em}img{max-width:100%}
.rec ul{margin:.3em 0;padding-left:1.2em}.rec li{margin:.25em 0}
.card{border:2px solid #2e7d32;border-radius:8px;padding:.8em 1.1em;margin:1em 0;background:#f7fbf7}
.card h2{margin:.1em 0 .4em;font-size:1.35em}.card dl{display:grid;grid-template-columns:11em 1fr;gap:.35em .8em;
margin:0}.card dt{font-weight:600;color:#2e5a30}.card dd{margin:0}.card.none{border-color:#b26a00;background:#fffaf2}
code{background:#f3f3f3;padding:0 .2em}
"""


def _context(report: Report) -> str:
    hw = report.hardware
    price = "no hardware given (--gpu), so no cost"
    if hw:
        dated = hw["source"] if hw["date"] in hw["source"] else f"{hw['source']}, {hw['date']}"
        price = f"{hw['label']} at ${hw['usd_per_hour']:.2f}/h ({dated})"
    sweep = f"{report.sweep.get('mode')}={','.join(f'{v:g}' for v in report.sweep.get('values', []))}"
    return (f"Run `{report.run_dir}` · scenario `{report.scenario}` · sweep `{sweep}` · "
            f"SLO {format_slo(slo_from_dict(report.slo))} · hardware: {price}")


def _sections(report: Report) -> list[tuple[str, str, list[Table | str]]]:
    """(id, heading, blocks): a block is a table or a paragraph; `!note` marks the quality note."""
    ref = report.reference_point or "n/a"
    measured = [v for v in report.variants if v.by_concurrency]
    unavailable = [f"**{v.name}**: {v.unavailable_reason}" for v in report.variants if v.unavailable_reason]
    per_point: list[Table | str] = []
    for v in measured:
        per_point += [f"**{v.name}**", points_table(v, bool(report.slo))]
    plan = report.vram_plan
    definitions = (
        "TTFT: time to the first content chunk. TPOT: (E2E − TTFT) / (output tokens − 1), requests with "
        "one output token excluded. ITL: gaps between content chunks, pooled over requests. Goodput: "
        "requests/s meeting every SLO, each request checked on its own values. Failed requests count as "
        "errors and never toward latency. n: completed requests at the point. ± is the half-width of a 95% "
        "bootstrap interval (shown from n = 10); a percentile needs n ≥ 1/(1 − q), so p99 needs 100 "
        "requests and shows \"n too small\" below that.")
    return [
        ("summary", f"Summary (latency, throughput and cost at {ref})", [summary_table(report), "!note"]),
        ("recommendation", "Recommendation", ["!rec", "!note"]),
        ("latency", "Latency and throughput by load point",
         [definitions, *per_point, "!plot:latency", "!plot:throughput"]),
        ("time", "Where the time goes", [time_intro(report), time_table(report)]),
        ("target", "The 100 ms target", [
            "The customer-service chatbot this stack exists for wants latency under 100 ms: whether each "
            "model's TTFT p99 and TPOT p99 stay under it, and up to which load; the VRAM plan below says which "
            "cards hold a 7-8B model in each precision.", target_table(report)]),
        ("quality", "Quality", [quality_table(report), *task_noise(report), "!note", "!plot:frontier",
                                "!plot:size_frontier"]),
        ("memory", "Memory", ["!plot:memory"]),
        ("vram", f"VRAM plan for {plan['model']}",
         [f"At {plan['context_len']} tokens of context × {plan['concurrency']} concurrent sequences, "
          f"{plan['unit']}. Formula: {plan['formula']}", vram_table(plan), "!plot:vram"]),
        ("unavailable", "Variants without speed numbers", unavailable or ["Every variant was measured."]),
        ("notes", "Notes", [f"- {n}" for n in report.notes] or ["None."]),
    ]


def task_noise_sentence(tasks: dict[str, Any] | None) -> str | None:
    """The source against its own repeat on the task set (eval/isolation.py `task_drift`)."""
    if not tasks:
        return None
    ci = tasks.get("recovery_ci")
    interval = f", 95% CI {ci[0]:.3f}–{ci[1]:.3f}" if ci else ""
    return (f"Task noise: the source's task set was run again at the end; its answers differed on "
            f"{tasks['disagreed']} of {tasks['items']} items (accuracy {tasks['accuracy_first']:.3f} then "
            f"{tasks['accuracy_repeat']:.3f}; recovery against itself {tasks['recovery']:.3f}{interval}). "
            + ("Greedy answers repeat exactly on this machine, so every answer a variant changes is the "
               "variant's doing." if tasks["disagreed"] == 0 else
               "Answers that move between two runs of the same model are noise, not a variant's doing: a "
               "variant's paired differences with the source include about as many."))


def task_noise(report: Report) -> list[str]:
    sentence = task_noise_sentence((report.noise or {}).get("tasks"))
    return [sentence] if sentence else []


def time_intro(report: Report) -> str:
    how = ("Each model was measured alone (the other engines stopped)" if report.isolation
           and report.isolation.startswith("one model") else f"Measured {report.isolation or 'as served'}")
    bandwidth = (f"this machine's memory bandwidth, {report.memory_bandwidth_gbs:.1f} GB/s (a STREAM-style copy)"
                 if report.memory_bandwidth_gbs else "the memory bandwidth (not measured)")
    noise = ""
    if report.noise and report.noise.get("rows"):
        worst = max(report.noise["rows"], key=lambda r: abs(r["drift"]))
        noise = (f" Noise: the source, measured again at the end, moved by up to {abs(worst['drift']):.1%} "
                 f"({worst['figure']} at {worst['point']}).")
    others = [v.name for v in report.variants if v.runtime not in (None, "vllm") and v.latency is not None]
    missing = (f" {', '.join(others)} ran on other runtimes, whose engines export no such phases: not in this "
               "table." if others else "")
    return (f"{how}. Queue, prefill and decode are vLLM's own per-request histograms over the load point; gateway "
            f"is quantserve's own time per request. Decode vs bandwidth = weight bytes read per output token × "
            f"output tok/s ÷ {bandwidth}: near 100% decode is bound by memory bandwidth.{missing}{noise}")


def to_markdown(report: Report) -> str:
    title, items = answer_card(report)
    out = ["# quantserve eval report", "", f"## {title}", "", *(f"- **{k}:** {v}" for k, v in items), "",
           _context(report), ""]
    for _, heading, blocks in _sections(report):
        out += [f"## {heading}", ""]
        for block in blocks:
            if isinstance(block, tuple):
                out += [md_table(block), ""]
            elif block == "!note":
                if report.quality_note:
                    out += [f"> **Quality note:** {report.quality_note}", ""]
            elif block == "!rec":
                rec = report.recommendation
                out += [f"**Recommended: {rec.variant or 'none'}**", "",
                        *(f"- {point}" for point in rec.summary or [rec.reasoning]), ""]
            elif block.startswith("!plot:"):
                out += [f"*Plot: {PLOTS[block[6:]][0]} (see report.html)*", ""]
            else:
                out += [block, ""]
    return "\n".join(out).rstrip() + "\n"


def answer_card(report: Report) -> tuple[str, list[tuple[str, str]]]:
    """The answer a reader came for, above the detail: the pick, why, what it costs, the 100 ms verdict."""
    rec = report.recommendation
    if rec.variant is None:
        return "No variant is recommended", [("Why", rec.summary[0] if rec.summary else rec.reasoning)]
    row = next((v for v in report.variants if v.name == rec.variant), None)
    fmt = f"{row.runtime or 'vllm'} / {row.scheme or row.method or ('bf16 source' if row.is_source else '?')}" \
        if row else "?"
    q = row.quality if row else None
    quality = "n/a"
    if q is not None and q.recovery is not None:
        ci = f" (95% CI {q.recovery_ci.low:.2f}–{q.recovery_ci.high:.2f})" if q.recovery_ci else ""
        quality = f"task recovery {q.recovery:.2f}{ci} against the source"
    elif row is not None and row.is_source:
        quality = "the source itself (the quality baseline)"
    if report.quality_note:
        quality += "; the default source already sits on a 4-bit grid, so quality losses read small"
    items = [("Runtime / format", fmt), ("Why", rec.why or ""), ("Cost", rec.cost or "n/a"),
             ("Under 100 ms?", row.target_100ms if row and row.target_100ms else "not judged"),
             ("Quality", quality)]
    if rec.tied_with:
        items.append(("Tied on cost", ", ".join(rec.tied_with)))
    return f"Recommended: {rec.variant}", items


def _inline_md(text: str) -> str:
    """The little markdown the paragraphs use: **bold** and `code`."""
    parts = html.escape(text).split("**")
    text = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = text.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(report: Report, plots: dict[str, str]) -> str:
    title, items = answer_card(report)
    card = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items)
    body = ["<h1>quantserve eval report</h1>",
            f'<section class="card{"" if report.recommendation.variant else " none"}" id="answer">'
            f"<h2>{html.escape(title)}</h2><dl>{card}</dl></section>",
            f"<p>{_inline_md(_context(report))}</p>"]
    for anchor, heading, blocks in _sections(report):
        body.append(f'<h2 id="{anchor}">{html.escape(heading)}</h2>')
        for block in blocks:
            if isinstance(block, tuple):
                body.append(html_table(block))
            elif block == "!note":
                if report.quality_note:
                    note = html.escape(report.quality_note)
                    body.append(f'<div class="note"><b>Quality note:</b> {note}</div>')
            elif block == "!rec":
                rec = report.recommendation
                name = html.escape(rec.variant or "none")
                points = "".join(f"<li>{html.escape(p)}</li>" for p in rec.summary or [rec.reasoning])
                body.append(f'<div class="rec"><p><b>Recommended: {name}</b></p><ul>{points}</ul></div>')
            elif block.startswith("!plot:"):
                name = block[6:]
                title = html.escape(PLOTS[name][0])
                body.append(f'<figure><img src="data:image/png;base64,{plots[name]}" alt="{title}">'
                            f"<figcaption>{title}</figcaption></figure>")
            elif block.startswith("- "):
                body.append(f"<ul><li>{_inline_md(block[2:])}</li></ul>")
            else:
                body.append(f"<p>{_inline_md(block)}</p>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>quantserve eval report</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(body) + "\n</body></html>\n")
