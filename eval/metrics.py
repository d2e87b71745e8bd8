"""Every number the report shows about speed, computed here and only here from RequestRecords.

Definitions follow `vllm bench serve`: TTFT = first content chunk - start; TPOT = (E2E - TTFT) /
(output_tokens - 1), only for requests with more than one output token; ITL = gaps between
consecutive content chunks, pooled over requests; goodput counts requests that meet every SLO.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from quantserve.eval.records import RequestRecord
from quantserve.eval.slo import Objective, Slo
from quantserve.eval.stats import MIN_BOOTSTRAP, Interval, bootstrap_percentiles, bootstrap_ratio, min_samples
from quantserve.stats import percentile


@dataclass(frozen=True)
class Distribution:
    """Milliseconds. Every percentile is computed (SLO checks use them as they are); `backed` says which
    ones the sample size supports, and only those are reported."""

    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    n: int = 0
    p50_ci: Interval | None = None  # 95% percentile-bootstrap intervals, where asked for and backed
    p99_ci: Interval | None = None

    @classmethod
    def of(cls, values: Sequence[float], intervals: bool = False) -> Distribution | None:
        if not values:
            return None
        n = len(values)
        cis: dict[float, Interval] = {}
        wanted = [q for q in (50, 99) if n >= max(MIN_BOOTSTRAP, min_samples(q))]
        if intervals and wanted:
            cis = bootstrap_percentiles(values, wanted)
        return cls(mean=sum(values) / n, p50=percentile(values, 50), p90=percentile(values, 90),
                   p95=percentile(values, 95), p99=percentile(values, 99), n=n, p50_ci=cis.get(50),
                   p99_ci=cis.get(99))

    def stat(self, name: str) -> float:
        return float(getattr(self, name))

    def backed(self, name: str) -> bool:
        """Whether the sample is large enough to report this stat ("p99" needs n >= 100)."""
        return name == "mean" or self.n >= min_samples(float(name.removeprefix("p")))


@dataclass(frozen=True)
class RequestTimes:
    """One successful request's latencies in ms; tpot is None with fewer than two output tokens."""

    ttft_ms: float
    e2e_ms: float
    tpot_ms: float | None
    itl_ms: tuple[float, ...]


def request_times(record: RequestRecord) -> RequestTimes:
    assert record.first_token is not None and record.end is not None
    ttft = (record.first_token - record.start) * 1000.0
    e2e = (record.end - record.start) * 1000.0
    n_out = record.output_tokens
    tpot = (e2e - ttft) / (n_out - 1) if n_out > 1 else None
    chunks = record.chunk_times
    itl = tuple((b - a) * 1000.0 for a, b in itertools.pairwise(chunks))
    return RequestTimes(ttft_ms=ttft, e2e_ms=e2e, tpot_ms=tpot, itl_ms=itl)


def meets(times: RequestTimes, objective: Objective) -> bool:
    """Per request, like vLLM's --goodput: the threshold applies to this request's own value.

    A request with one output token has no TPOT and passes it (vLLM counts its TPOT as 0). For ITL,
    the stat is taken over this request's own gaps (itl_p99: its 99th-percentile gap).
    """
    if objective.metric == "ttft":
        value = times.ttft_ms
    elif objective.metric == "e2e":
        value = times.e2e_ms
    elif objective.metric == "tpot":
        value = times.tpot_ms or 0.0
    else:
        dist = Distribution.of(times.itl_ms)
        value = dist.stat(objective.stat) if dist else 0.0
    return value <= objective.threshold_ms


@dataclass(frozen=True)
class Metrics:
    requests: int  # measured (warm-up excluded), failed ones included
    completed: int
    failed: int
    error_rate: float
    duration_s: float  # wall span: first start to last end of the measured requests
    request_throughput: float  # completed requests / s
    output_throughput: float  # output tokens of completed requests / s
    output_throughput_ci: Interval | None  # 95% bootstrap over requests; None below MIN_BOOTSTRAP completed
    total_input_tokens: int
    total_output_tokens: int
    goodput_rps: float | None  # None when no SLO was given
    slo_met: int | None  # requests that met every SLO
    ttft_ms: Distribution | None
    tpot_ms: Distribution | None
    itl_ms: Distribution | None
    e2e_ms: Distribution | None
    errors: dict[str, int]  # error message -> count
    usage_missing: int  # completed requests whose output count came from chunks, not usage


def throughput_interval(records: Sequence[RequestRecord], duration_s: float) -> Interval | None:
    """Output tok/s with a bootstrap interval over requests.

    Requests, not time windows, are resampled: a point holds ~100 requests but only a handful of windows'
    worth of time, and the first and last windows are half-empty (ramp-up, drain). A resample's
    throughput is its output tokens per second of request time, times the point's measured mean number
    of requests in flight (Little's law: sum of request times / wall span); on the original sample that is
    exactly tokens / duration. Slow or fast requests and long or short answers widen it; failed requests
    count their time and no tokens.
    """
    ok = sum(r.ok for r in records)
    if duration_s <= 0 or ok < MIN_BOOTSTRAP:
        return None
    busy = [(r.end - r.start) if r.end is not None else 0.0 for r in records]
    tokens = [r.output_tokens if r.ok else 0 for r in records]
    return bootstrap_ratio(tokens, busy, scale=sum(busy) / duration_s)


def compute_metrics(records: Sequence[RequestRecord], slo: Slo = ()) -> Metrics:
    ok = [r for r in records if r.ok]
    times = [request_times(r) for r in ok]
    ends = [r.end for r in records if r.end is not None]
    duration = (max(ends) - min(r.start for r in records)) if ends else 0.0
    per_s = (lambda n: n / duration) if duration > 0 else (lambda n: 0.0)
    out_tokens = sum(r.output_tokens for r in ok)
    met = sum(all(meets(t, o) for o in slo) for t in times) if slo else None
    failed = len(records) - len(ok)
    return Metrics(
        requests=len(records),
        completed=len(ok),
        failed=failed,
        error_rate=failed / len(records) if records else 0.0,
        duration_s=duration,
        request_throughput=per_s(len(ok)),
        output_throughput=per_s(out_tokens),
        output_throughput_ci=throughput_interval(records, duration),
        total_input_tokens=sum(r.prompt_tokens or 0 for r in ok),
        total_output_tokens=out_tokens,
        goodput_rps=per_s(met) if met is not None else None,
        slo_met=met,
        ttft_ms=Distribution.of([t.ttft_ms for t in times], intervals=True),
        tpot_ms=Distribution.of([t.tpot_ms for t in times if t.tpot_ms is not None], intervals=True),
        itl_ms=Distribution.of([gap for t in times for gap in t.itl_ms]),
        e2e_ms=Distribution.of([t.e2e_ms for t in times]),
        errors=dict(Counter(r.error or "no content received" for r in records if not r.ok).most_common()),
        usage_missing=sum(r.completion_tokens is None for r in ok),
    )


def slo_violations(metrics: Metrics, slo: Slo) -> list[str]:
    """Aggregate check (ttft_p99 against the p99 over requests); empty when every objective holds."""
    problems = []
    for objective in slo:
        dist: Distribution | None = getattr(metrics, f"{objective.metric}_ms")
        if dist is None:
            if objective.metric in ("ttft", "e2e") or metrics.completed == 0:
                problems.append(f"{objective.key}: no completed requests")
            continue  # no TPOT/ITL samples: every request had a single token, nothing to violate
        value = dist.stat(objective.stat)
        if value > objective.threshold_ms:
            # Too few samples for the percentile: it is then near the sample's maximum, and a true percentile
            # is at least as high, so the miss stands; the text says what it rests on.
            basis = "" if dist.backed(objective.stat) else f" (n={dist.n}: too few to back it)"
            problems.append(f"{objective.key} {value:.0f} ms > {objective.threshold_ms:g} ms{basis}")
    return problems
