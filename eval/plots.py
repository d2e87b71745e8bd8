"""The report's figures as base64 PNG (matplotlib Agg, no pyplot state), so report.html stands alone.

Every plot returns an image even without data: a figure that says what is missing beats a gap.
"""

from __future__ import annotations

import base64
import io
from typing import TYPE_CHECKING

from quantserve.eval.report_schema import Report, VariantRow

if TYPE_CHECKING:
    from matplotlib.figure import Figure

COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _figure(width: float = 7.5, height: float = 3.8) -> Figure:
    # matplotlib is a serve-extra dependency: import it only when a report is drawn.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _empty(title: str, message: str) -> str:
    fig = _figure(7.5, 2.0)
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", wrap=True, color="#555555")
    return _png(fig)


def _tick_label(name: str, rows: list[VariantRow]) -> str:
    """Drop the model-name prefix all rows share so tick labels stay readable."""
    source = next((r.name for r in rows if r.is_source), None)
    if source and name == source:
        return "source"
    if source and name.startswith(source + "-"):
        return name[len(source) + 1:]
    names = [r.name for r in rows]
    if len(names) < 2:
        return name
    shortest = min(names, key=len)
    end = next((i for i, ch in enumerate(shortest) if any(n[i] != ch for n in names)), len(shortest))
    prefix = shortest[: shortest.rfind("-", 0, end) + 1]
    return name[len(prefix):] or name


def latency_plot(report: Report) -> str:
    title = f"Latency percentiles by variant (at {report.reference_point or 'n/a'})"
    rows = [v for v in report.variants if v.latency]
    if not rows:
        return _empty(title, "no variant was measured")
    fig = _figure(9.0, 3.8)
    axes = fig.subplots(1, 2)
    stats = ("p50", "p90", "p99")
    width = 0.8 / len(stats)
    for ax, metric, label in ((axes[0], "ttft_ms", "TTFT (ms)"), (axes[1], "tpot_ms", "TPOT (ms)")):
        for j, stat in enumerate(stats):
            dists = [getattr(v.latency, metric) for v in rows]
            # no bar where n is too small for the percentile (None); whiskers: its 95% interval, where one
            values = [(getattr(d, stat) or 0.0) if d else 0.0 for d in dists]
            cis = [getattr(d, f"{stat}_ci", None) if d else None for d in dists]
            # a percentile interval need not contain its estimate (p99 of 100); matplotlib wants yerr >= 0
            yerr = [[max(0.0, v - ci.low) if ci else 0.0 for v, ci in zip(values, cis, strict=True)],
                    [max(0.0, ci.high - v) if ci else 0.0 for v, ci in zip(values, cis, strict=True)]]
            xs = [i + (j - 1) * width for i in range(len(rows))]
            ax.bar(xs, values, width, label=stat, color=COLORS[j], yerr=yerr, capsize=2)
        ax.set_xticks(range(len(rows)), [_tick_label(v.name, rows) for v in rows], rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    return _png(fig)


def throughput_plot(report: Report) -> str:
    mode = report.sweep.get("mode", "load")
    title = f"Output throughput vs {mode}"
    rows = [v for v in report.variants if any(p.throughput for p in v.by_concurrency)]
    if not rows:
        return _empty(title, "no variant completed a request")
    fig = _figure()
    ax = fig.subplots()
    for i, v in enumerate(rows):
        pts = [(p.value, p.throughput.output_tok_s) for p in v.by_concurrency if p.throughput]
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=_tick_label(v.name, rows),
                color=COLORS[i % len(COLORS)])
    ax.set_xlabel(mode + (" (concurrent requests)" if mode == "concurrency" else " (requests/s)"))
    ax.set_ylabel("output tokens/s")
    values = sorted({p.value for v in rows for p in v.by_concurrency})
    if mode == "concurrency" and len(values) > 1 and values[-1] / values[0] > 8:
        ax.set_xscale("log", base=2)
    ax.set_xticks(values, [f"{x:g}" for x in values])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _png(fig)


# one marker shape per runtime, so the frontier shows which runtime each point ran on
RUNTIME_MARKERS = {"vllm": "o", "llama.cpp": "s", "openvino": "^"}


def _runtime_point(ax, x: float, y: float, v: VariantRow, color: str, shown: set[str]) -> None:
    runtime = v.runtime or "vllm"
    label = None if runtime in shown else runtime
    shown.add(runtime)
    ax.scatter([x], [y], s=60, color=color, marker=RUNTIME_MARKERS.get(runtime, "D"), zorder=3, label=label,
               edgecolors="black", linewidths=0.5)


def frontier_plot(report: Report) -> str:
    use_recovery = any(v.quality.recovery is not None for v in report.variants)
    qlabel = "task recovery (variant / source accuracy)" if use_recovery else "top-1 agreement with source"
    title = "Quality vs $ per 1M output tokens"
    pts = []
    for v in report.variants:
        quality = v.quality.recovery if use_recovery else v.quality.top1_agreement
        if v.cost and quality is not None:
            pts.append((v.cost.usd_per_1m_output_tokens, quality, v))
    if not pts:
        why = "no variant has both a cost and a quality score" if report.hardware else "no --gpu price row"
        return _empty(title, f"no points to plot: {why}")
    fig = _figure()
    ax = fig.subplots()
    rows = [v for _, _, v in pts]
    shown: set[str] = set()
    for i, (x, y, v) in enumerate(pts):
        _runtime_point(ax, x, y, v, COLORS[i % len(COLORS)], shown)
        ax.annotate(_tick_label(v.name, rows), (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
    frontier, best = [], float("-inf")
    for x, y, _ in sorted(pts, key=lambda p: (p[0], -p[1])):
        if y > best:
            frontier.append((x, y))
            best = y
    ax.step([x for x, _ in frontier], [y for _, y in frontier], where="post", color="#999999",
            linestyle="--", label="Pareto frontier (nothing cheaper is better)")
    hw = report.hardware["name"] if report.hardware else "?"
    ax.set_xlabel(f"$ per 1M output tokens on {hw} at {report.reference_point}")
    ax.set_ylabel(qlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _png(fig)


def size_frontier_plot(report: Report) -> str:
    """Mean KLD against the source vs size, from the manifests: every built variant, served here or not, so
    quantization methods compare at equal size (held-out text, transformers)."""
    title = "Quality vs size (every built variant)"
    rows = [v for v in report.variants if v.size_ratio is not None and v.quality.kld_mean is not None
            and not v.is_source]
    if not rows:
        return _empty(title, "no manifests with a KLD: nothing to plot")
    fig = _figure()
    ax = fig.subplots()
    shown: set[str] = set()
    for i, v in enumerate(rows):
        _runtime_point(ax, v.size_ratio, v.quality.kld_mean, v, COLORS[i % len(COLORS)], shown)
        ax.annotate(_tick_label(v.name, rows), (v.size_ratio, v.quality.kld_mean), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    frontier, best = [], float("inf")
    for v in sorted(rows, key=lambda v: (v.size_ratio, v.quality.kld_mean)):
        if v.quality.kld_mean < best:
            frontier.append((v.size_ratio, v.quality.kld_mean))
            best = v.quality.kld_mean
    ax.step([x for x, _ in frontier], [y for _, y in frontier], where="post", color="#999999", linestyle="--",
            label="Pareto frontier (nothing smaller is closer)")
    ax.set_yscale("log")
    ax.set_xlabel("size on disk / source size")
    ax.set_ylabel("mean KLD vs source (log)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _png(fig)


def memory_plot(report: Report) -> str:
    title = "Weight size by variant"
    rows = [v for v in report.variants if v.size_bytes]
    if not rows:
        return _empty(title, "no manifests: sizes unknown")
    fig = _figure(7.5, 1.0 + 0.45 * len(rows))
    ax = fig.subplots()
    sizes = [(v.size_bytes or 0) / 1e6 for v in rows]
    ax.barh(range(len(rows)), sizes, color=[COLORS[0] if v.latency else "#bbbbbb" for v in rows])
    ax.set_yticks(range(len(rows)), [_tick_label(v.name, rows) for v in rows])
    ax.invert_yaxis()
    for i, v in enumerate(rows):
        ratio = f"  {v.size_ratio:.2f}×" if v.size_ratio is not None else ""
        ax.text(sizes[i], i, f" {sizes[i]:.0f} MB{ratio}", va="center", fontsize=8)
    ax.set_xlabel("MB on disk (grey: not measured here)")
    ax.set_xlim(0, max(sizes) * 1.35)
    ax.set_title(title)
    return _png(fig)


def vram_plot(report: Report) -> str:
    plan = report.vram_plan
    title = f"{plan['model']}: VRAM at {plan['context_len']} tokens × {plan['concurrency']} sequences"
    fig = _figure(7.5, 1.2 + 0.5 * len(plan["rows"]))
    ax = fig.subplots()
    labels = [r["precision"] for r in plan["rows"]]
    left = [0.0] * len(labels)
    for key, name, color in (("weights_gb", "weights", COLORS[0]), ("kv_cache_gb", "KV cache", COLORS[1]),
                             ("overhead_gb", "runtime overhead", "#999999")):
        values = [r[key] for r in plan["rows"]]
        ax.barh(range(len(labels)), values, left=left, label=name, color=color)
        left = [a + b for a, b in zip(left, values, strict=True)]
    util = plan["gpu_memory_utilization"]
    for gb in plan["gpus_gb"]:
        ax.axvline(gb * util, color="#d62728", alpha=0.5, linestyle=":")
        ax.text(gb * util, -0.6, f"{gb} GB", fontsize=7, ha="center", color="#d62728")
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(f"GiB (dotted: {util:.0%} of each card)")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title)
    return _png(fig)


PLOTS = {
    "latency": ("Latency percentiles by variant", latency_plot),
    "throughput": ("Throughput vs load", throughput_plot),
    "frontier": ("Quality vs cost frontier", frontier_plot),
    "size_frontier": ("Quality vs size frontier", size_frontier_plot),
    "memory": ("Weight size by variant", memory_plot),
    "vram": ("VRAM plan", vram_plot),
}


def render_plots(report: Report) -> dict[str, str]:
    """Plot name -> base64 PNG."""
    return {name: plot(report) for name, (_, plot) in PLOTS.items()}
