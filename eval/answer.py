"""The end of `quantserve run` on the terminal: the recommendation and one compact row per variant."""

from __future__ import annotations

from pathlib import Path

from quantserve.eval.report_rows import target_verdict
from quantserve.eval.report_schema import Dist, Report, VariantRow
from quantserve.progress import terminal

COLUMNS = ("variant", "runtime / format", "MB", "recovery", "TTFT p99 c=1", "TPOT p99 c=1", "tok/s", "$/1M tok",
           "< 100 ms")


def _p99(dist: Dist | None) -> str:
    if dist is None:
        return "-"
    return f"{dist.p99:.0f} ms" if dist.p99 is not None else f"n={dist.n}"


def answer_row(v: VariantRow, source_prefix: str) -> list[str]:
    c1 = next((p for p in v.by_concurrency if p.mode == "concurrency" and p.value == 1), None)
    lat = c1.latency if c1 else None
    name = "source" if v.is_source else v.name.removeprefix(source_prefix)
    fmt = f"{v.runtime or 'vllm'} / {v.scheme or v.method or '?'}"
    return [name, fmt,
            f"{v.size_bytes / 1e6:.0f}" if v.size_bytes else "-",
            f"{v.quality.recovery:.2f}" if v.quality.recovery is not None else "-",
            _p99(lat.ttft_ms if lat else None), _p99(lat.tpot_ms if lat else None),
            f"{v.throughput.output_tok_s:.1f}" if v.throughput else "-",
            f"{v.cost.usd_per_1m_output_tokens:.3g}" if v.cost else "-",
            target_verdict(v.by_concurrency) if v.by_concurrency else "not served"]


def print_answer(report_json: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    report = Report.model_validate_json(Path(report_json).read_text())
    source = next((v for v in report.variants if v.is_source), None)
    prefix = f"{source.name}-" if source else ""
    rec = report.recommendation
    grid = " (a source already on a 4-bit grid: losses read small)" if report.quality_note else ""
    table = Table(title=f"{source.name if source else 'variants'}: tok/s and $ at {report.reference_point or 'n/a'}; "
                        f"recovery: task answers against the source{grid}", title_justify="left")
    for i, column in enumerate(COLUMNS):
        table.add_column(column, justify="left" if i < 2 else "right", no_wrap=i < 2)
    for v in report.variants:
        table.add_row(*answer_row(v, prefix), style="bold green" if v.name == rec.variant else None)
    console = Console(file=terminal(), width=max(140, Console(file=terminal()).width))
    console.print(table)
    if rec.variant:
        console.print(f"[bold]Recommended: {rec.variant}[/bold] — {rec.why}", highlight=False)
        if rec.cost:
            console.print(f"  cost: {rec.cost}", highlight=False, markup=False)
    else:
        console.print("[bold]No variant is recommended[/bold]: " + (rec.summary[0] if rec.summary else ""),
                      highlight=False)
