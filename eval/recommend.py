"""Which variant to deploy under the user's constraints, and a paragraph saying why.

Rule: keep the variants that were measured, fit the memory budget, meet the SLO at some load
point and pass the quality floor; among those pick the lowest $/1M output tokens at the variant's
best SLO-meeting point (on one machine: the highest SLO-meeting throughput). Costs within the machine's
measured speed noise of the cheapest (the source measured twice in one run) are a tie the run cannot order,
resolved by the smallest weights: so two runs of one machine make the same pick unless a cost gap exceeds the
noise.

Quality floor: the lower end of task recovery's 95% interval must reach --min-recovery (0.95), so a
variant passes only when the task set shows it close to the source, not merely fails to show it worse;
where tasks were not run, mean KLD against the source must be at most --max-kld (0.05).
"""

from __future__ import annotations

from typing import Any

from quantserve.eval.report_schema import FloorVerdict, PointRow, Recommendation, VariantRow
from quantserve.eval.slo import Slo, format_slo, slo_to_dict

GIB = 1024**3
DEFAULT_MIN_RECOVERY = 0.95
DEFAULT_MAX_KLD = 0.05
FLOOR_REJECTION = "below the quality floor"


def best_point(row: VariantRow, slo: Slo) -> PointRow | None:
    """The highest-throughput load point that completed requests and met every SLO."""
    good = [p for p in row.by_concurrency if p.throughput and not (slo and p.slo_violations)]
    return max(good, key=lambda p: p.throughput.output_tok_s if p.throughput else 0.0, default=None)


def _plan_row(row: VariantRow, vram_plan: dict[str, Any]) -> dict[str, Any] | None:
    return next((r for r in vram_plan.get("rows", []) if r["precision"] == row.plan_precision), None)


def quality_floor(row: VariantRow, min_recovery: float | None, max_kld: float = DEFAULT_MAX_KLD) -> FloorVerdict:
    """Pass or fail on quality, and why. Off when min_recovery is 0 or None."""
    if not min_recovery:
        return FloorVerdict(passed=None, basis="off", reason="no quality floor (--min-recovery 0)")
    if row.is_source:
        return FloorVerdict(passed=True, basis="recovery", reason="the source is the quality baseline")
    q = row.quality
    if q.recovery_ci is not None and q.recovery is not None:
        low, high = q.recovery_ci.low, q.recovery_ci.high
        passed = low >= min_recovery
        return FloorVerdict(passed=passed, basis="recovery", reason=(
            f"task recovery {q.recovery:.2f} (95% CI {low:.2f}–{high:.2f}): lower bound "
            f"{low:.2f} {'≥' if passed else '<'} {min_recovery:g}"))
    if q.recovery is not None:  # an eval.json from before per-item results were kept: no interval to take
        passed = q.recovery >= min_recovery
        return FloorVerdict(passed=passed, basis="recovery", reason=(
            f"task recovery {q.recovery:.2f} {'≥' if passed else '<'} {min_recovery:g} (point estimate: the "
            "run kept no per-item task results, so there is no interval)"))
    if q.kld_mean is not None:
        passed = q.kld_mean <= max_kld
        return FloorVerdict(passed=passed, basis="kld", reason=(
            f"tasks not run; mean KLD {q.kld_mean:.4f} {'≤' if passed else '>'} {max_kld:g}"))
    return FloorVerdict(passed=False, basis="unknown", reason="tasks not run and no KLD measured: quality unknown")


def rejection(row: VariantRow, slo: Slo, max_memory_gb: float | None, floor: FloorVerdict | None,
              vram_plan: dict[str, Any]) -> str | None:
    """Why a row cannot be recommended, or None. Memory is checked for the measured weights and for
    the plan model at the same precision, since the budget is meant for the real deployment."""
    if row.latency is None:
        return row.unavailable_reason or "not measured"
    if max_memory_gb is not None:
        if row.size_bytes is None:
            return "weight size unknown (no manifest), cannot check the memory budget"
        if row.size_bytes > max_memory_gb * GIB:
            return f"weights {row.size_bytes / GIB:.1f} GiB exceed the {max_memory_gb:g} GB budget"
        plan = _plan_row(row, vram_plan)
        usable = max_memory_gb * vram_plan.get("gpu_memory_utilization", 1.0)
        if plan and plan["total_gb"] > usable:
            return (f"{vram_plan['model']} at this precision needs ~{plan['total_gb']:.1f} GiB, "
                    f"over the {usable:.1f} GiB usable of {max_memory_gb:g} GB")
    if floor is not None and floor.passed is False:
        return f"{FLOOR_REJECTION}: {floor.reason}"
    if best_point(row, slo) is None:
        first = next((p for p in row.by_concurrency if p.slo_violations), None)
        detail = f" (at {first.point}: {'; '.join(first.slo_violations)})" if first else ""
        return f"misses the SLO at every load point{detail}"
    return None


def _rank_key(row: VariantRow, point: PointRow) -> tuple[float, float, float]:
    cost = point.cost.usd_per_1m_output_tokens if point.cost else float("inf")
    tok_s = point.throughput.output_tok_s if point.throughput else 0.0
    return (cost, -tok_s, -(row.quality.recovery or 0.0))


def _fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{unit}"


def _plan_sentence(row: VariantRow, vram_plan: dict[str, Any]) -> str:
    plan_row = _plan_row(row, vram_plan)
    if not plan_row:
        return ""
    fitting = [gb for gb in vram_plan["gpus_gb"] if plan_row["fits"][str(gb)]]
    where = f"fits {fitting[0]} GB cards and up" if fitting else "fits none of the 8-24 GB cards"
    return (f" For the {vram_plan['model']} target the same precision ({row.plan_precision}) needs "
            f"about {plan_row['total_gb']:.1f} GiB at {vram_plan['context_len']} tokens × "
            f"{vram_plan['concurrency']} sequences, which {where}.")


def _relative_cost(point: PointRow) -> float:
    """$ per 1M output tokens; where no price is known, the inverse of its throughput ranks the same way."""
    if point.cost:
        return point.cost.usd_per_1m_output_tokens
    tok_s = point.throughput.output_tok_s if point.throughput else 0.0
    return 1.0 / tok_s if tok_s else float("inf")


def within_noise(passing: list[tuple[VariantRow, PointRow]], speed_noise: float | None
                 ) -> list[tuple[VariantRow, PointRow]]:
    """The cheapest qualifying variant and every other whose cost per token is within the machine's measured speed
    noise of it, cheapest first: a run cannot order these, so the next run may order them the other way."""
    ranked = sorted(passing, key=lambda rp: _rank_key(*rp))
    cheapest = ranked[0][1]
    floor = _relative_cost(cheapest)

    def tolerance(point: PointRow) -> float:  # the drift, or the two throughputs' own intervals if wider
        return max(speed_noise or 0.0, _relative_ci(cheapest) + _relative_ci(point))

    return [rp for rp in ranked if _relative_cost(rp[1]) <= floor * (1 + tolerance(rp[1]))]


def _relative_ci(point: PointRow) -> float:
    """Half the 95% interval of the point's output tok/s over its value (0 where none was computed)."""
    t = point.throughput
    return t.output_tok_s_ci.half_width / t.output_tok_s if t and t.output_tok_s_ci and t.output_tok_s else 0.0


def pick(passing: list[tuple[VariantRow, PointRow]], speed_noise: float | None
         ) -> tuple[tuple[VariantRow, PointRow], list[tuple[VariantRow, PointRow]]]:
    """The decision rule: the cheapest per token; where others are within the speed noise of it (a tie on cost),
    the smallest weights among them, then the best task recovery. Weights are measured without noise, so a tie
    resolves the same way on every run; and smaller weights leave more memory for the KV cache, or fit a smaller
    card, at a cost this run cannot tell apart. Returns the pick and the tied set (one entry: no tie)."""
    tied = within_noise(passing, speed_noise)
    if len(tied) == 1:
        return tied[0], tied
    winner = min(tied, key=lambda rp: (rp[0].size_bytes if rp[0].size_bytes is not None else float("inf"),
                                       -(rp[0].quality.recovery or 0.0), _rank_key(*rp)))
    return winner, tied


def recommend(rows: list[VariantRow], slo: Slo, max_memory_gb: float | None, min_recovery: float | None,
              hardware_label: str | None, vram_plan: dict[str, Any],
              max_kld: float = DEFAULT_MAX_KLD, speed_noise: float | None = None) -> Recommendation:
    """`speed_noise`: how far the source's output tok/s moved between its two runs in this one (a fraction),
    where it was measured twice; a qualifying variant whose cost is within it of the winner's is named as a tie
    this run cannot break."""
    constraints = {"max_memory_gb": max_memory_gb, "slo": slo_to_dict(slo), "min_recovery": min_recovery or 0.0,
                   "max_kld": max_kld}
    asked = [f"memory ≤ {max_memory_gb:g} GB (measured weights and the plan-model estimate)"
             if max_memory_gb is not None else "no memory budget",
             f"SLO {format_slo(slo)}",
             f"quality floor: task recovery's 95% CI lower bound ≥ {min_recovery:g} (mean KLD ≤ {max_kld:g} "
             "where tasks were not run)" if min_recovery else "no quality floor"]
    floors = {row.name: quality_floor(row, min_recovery, max_kld) for row in rows}
    rejected: dict[str, str] = {}
    passing: list[tuple[VariantRow, PointRow]] = []
    for row in rows:
        why = rejection(row, slo, max_memory_gb, floors[row.name], vram_plan)
        point = best_point(row, slo) if why is None else None
        if why is None and point is not None:
            passing.append((row, point))
        else:
            rejected[row.name] = why or "no usable load point"
    rejected_text = "; ".join(f"{name}: {why}" for name, why in rejected.items())
    head = f"Constraints: {', '.join(asked)}; {len(passing)} of {len(rows)} variants qualify."
    # A variant ruled out for another reason is still named when it is also below the floor: an unmeasured
    # variant may be one not worth measuring. One ruled out by the floor is already named above.
    below = [f"{name} ({v.reason})" for name, v in floors.items()
             if v.passed is False and not rejected.get(name, "").startswith(FLOOR_REJECTION)]
    quality = f" Also below the quality floor: {'; '.join(below)}." if below else ""
    if not passing:
        summary = [f"{head} No variant meets every constraint, so none is recommended.",
                   f"Why each fails: {rejected_text}.{quality}", "Relax the tightest constraint or measure at "
                   "lower load."]
        return Recommendation(variant=None, constraints=constraints, rejected=rejected, quality_floor=floors,
                              summary=summary, reasoning=" ".join(summary))
    (winner, point), tied = pick(passing, speed_noise)
    source = next((r for r in rows if r.is_source), None)
    served_on = f" (on {winner.runtime})" if winner.runtime else ""
    if len(tied) > 1:
        noise = f"{speed_noise:.0%}" if speed_noise else "0%"
        others = ", ".join(f"{r.name} {_relative_cost(p) / _relative_cost(point):.2f}×" for r, p in tied
                           if r is not winner)
        why = (f"tied on cost with {others} per token, inside this machine's speed noise ({noise}: the "
               "source's output tok/s moved that much between its two runs), and the smallest weights of them")
    else:
        why = "the lowest cost per output token of the variants that meet every constraint"
        if len(passing) > 1 and speed_noise:
            why += f", by more than this machine's speed noise ({speed_noise:.0%})"
    summary = [f"{winner.name}{served_on} is recommended: {why}."]
    tok_s = point.throughput.output_tok_s if point.throughput else None
    cost = f"{_fmt(tok_s, '.1f')} output tok/s at {point.point}"
    if point.cost:
        cost = (f"${point.cost.usd_per_1m_output_tokens:.3g} per 1M output tokens on "
                f"{hardware_label or point.cost.price_row} ({cost}")
        src_point = best_point(source, slo) if source and source is not winner else None
        if src_point and src_point.cost:
            ratio = point.cost.usd_per_1m_output_tokens / src_point.cost.usd_per_1m_output_tokens
            cost += f"; {ratio:.2f}× the source's ${src_point.cost.usd_per_1m_output_tokens:.3g}"
        cost += ")"
    summary.append(f"Cost: {cost}.")
    lat = point.latency
    ttft, tpot = (lat.ttft_ms, lat.tpot_ms) if lat else (None, None)

    def p99(dist: Any) -> str:
        if dist is None:
            return "n/a"
        return _fmt(dist.p99, '.0f', ' ms') if dist.p99 is not None else f"not backed (n={dist.n})"

    summary.append(f"Latency at {point.point}: TTFT p99 {p99(ttft)}, TPOT p99 {p99(tpot)}; 100 ms target: "
                   f"{winner.target_100ms or 'not judged'}.")
    q = winner.quality
    size = f"{winner.size_bytes / 1e6:.0f} MB" if winner.size_bytes else "unknown size"
    acc = _fmt(q.task_accuracy, '.2f') + (f" ± {q.task_accuracy_ci.half_width:.2f}" if q.task_accuracy_ci else "")
    rec = _fmt(q.recovery, '.2f') + (f" ± {q.recovery_ci.half_width:.2f}" if q.recovery_ci else "")
    paired = (f", McNemar p {q.paired_p_value:.2g} against the source"
              if q.paired_p_value is not None and not winner.is_source else "")
    summary.append(f"Weights {size} ({_fmt(winner.size_ratio, '.2f', '× the source')}); quality: task recovery "
                   f"{rec}, accuracy {acc}{paired}, KLD {_fmt(q.kld_mean, '.4f')}, top-1 agreement "
                   f"{_fmt(q.top1_agreement, '.3f')}, PPL ratio {_fmt(q.ppl_ratio, '.3f')}; floor: "
                   f"{floors[winner.name].reason}.")
    summary.append(f"{head} Rule: the lowest $ per 1M output tokens at each one's best SLO-meeting load point; "
                   "variants within the machine's speed noise of the cheapest are a tie, resolved by the smallest "
                   "weights.")
    if rejected:
        summary.append(f"Not chosen: {rejected_text}.{quality}")
    costlier = [r.name for r, _ in passing if all(r is not t for t, _ in tied)]
    if costlier:
        summary.append(f"Also qualifying but costlier per token beyond the noise: {', '.join(costlier)}.")
    if plan := _plan_sentence(winner, vram_plan).strip():
        summary.append(plan)
    return Recommendation(variant=winner.name, constraints=constraints, rejected=rejected, quality_floor=floors,
                          tied_with=[r.name for r, _ in tied if r is not winner], summary=summary,
                          reasoning=" ".join(summary), why=why, cost=cost)
