"""report.json: the schema the report's tables, plots and recommendation are all rendered from."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from quantserve.eval.stats import Interval

REPORT_SCHEMA_VERSION = 1


class CI(BaseModel):
    """A 95% confidence interval; the tables show it as value ± half_width (GuideLLM's form)."""

    value: float
    low: float
    high: float
    half_width: float

    @classmethod
    def of(cls, interval: Interval | None) -> CI | None:
        if interval is None:
            return None
        return cls(value=interval.value, low=interval.low, high=interval.high, half_width=interval.half_width)


class Dist(BaseModel):
    """Milliseconds over n samples. A percentile the sample cannot back is null, shown as "n too small":
    pXX needs n >= 1 / (1 - XX/100), so p50 needs 2, p90 10, p95 20 and p99 100."""

    mean: float
    p50: float | None
    p90: float | None
    p95: float | None
    p99: float | None
    n: int = 0
    p50_ci: CI | None = None  # percentile bootstrap over requests (TTFT and TPOT; n >= 10)
    p99_ci: CI | None = None


class Latency(BaseModel):
    ttft_ms: Dist | None
    tpot_ms: Dist | None
    itl_ms: Dist | None
    e2e_ms: Dist | None


class Throughput(BaseModel):
    output_tok_s: float
    request_s: float
    output_tok_s_ci: CI | None = None  # bootstrap over requests (eval/metrics.py); None below 10 completed


class Cost(BaseModel):
    usd_per_1m_output_tokens: float
    tokens_per_usd: float
    price_row: str
    usd_per_hour: float


class QualityRow(BaseModel):
    ppl: float | None = None
    ppl_ratio: float | None = None
    kld_mean: float | None = None
    top1_agreement: float | None = None
    task_accuracy: float | None = None
    task_accuracy_by_kind: dict[str, float] | None = None
    task_items: int | None = None  # items scored
    task_accuracy_ci: CI | None = None  # Wilson 95%
    paired_items: int | None = None  # items scored for both this model and the source (matched by id)
    only_source_right: int | None = None  # McNemar's discordant pairs
    only_variant_right: int | None = None
    paired_p_value: float | None = None  # exact McNemar against the source, two-sided
    recovery: float | None = None  # right answers / the source's right answers, on the same items
    recovery_ci: CI | None = None  # paired bootstrap over items, 95%


class TimeRow(BaseModel):
    """Where a load point's time went (vLLM's own histograms) and what limits it (eval/breakdown.py)."""

    requests: int
    queue_ms: float
    prefill_ms: float
    decode_ms: float
    gateway_ms: float | None
    decode_efficiency: float | None  # weight bytes per token x output tok/s / measured memory bandwidth
    bottleneck: str
    advice: str


class PointRow(BaseModel):
    """One load point of one model."""

    point: str
    mode: str
    value: float
    requests: int
    completed: int
    failed: int
    error_rate: float
    latency: Latency | None
    throughput: Throughput | None
    goodput_rps: float | None
    cost: Cost | None
    slo_violations: list[str]  # aggregate check at this point; empty when every objective holds
    errors: dict[str, int]
    time: TimeRow | None = None  # None: the engine's /metrics was out of reach (an endpoint given to eval)


class VariantRow(BaseModel):
    name: str
    is_source: bool = False
    runtime: str | None = None  # vllm, llama.cpp, openvino: what served it (or would)
    method: str | None = None
    scheme: str | None = None
    bits: int | None = None
    size_bytes: int | None = None
    size_ratio: float | None = None
    servable_here: bool | None = False  # served in this run; else the manifest's verdict where it was quantized
    servable_reason: str = ""
    dtype: str | None = None  # what its engine ran in, as the gateway reported it
    dtype_from: str | None = None  # "probe" (fastest measured on the machine) or "config" (the user's choice)
    quality: QualityRow = Field(default_factory=QualityRow)
    reference_point: str | None = None  # the load point latency/throughput/cost below are taken at
    latency: Latency | None = None
    throughput: Throughput | None = None
    goodput_rps: float | None = None
    cost: Cost | None = None
    by_concurrency: list[PointRow] = Field(default_factory=list)
    unavailable_reason: str | None = None  # why latency/throughput/cost are null
    plan_precision: str | None = None  # its row in vram_plan
    target_100ms: str | None = None  # the seed's target: TTFT p99 and TPOT p99 under 100 ms, up to which load


class FloorVerdict(BaseModel):
    """The quality floor's verdict on one variant: recovery's CI lower bound, else mean KLD."""

    passed: bool | None  # None: the floor is off (--min-recovery 0)
    basis: str  # "recovery", "kld", "unknown" (neither measured) or "off"
    reason: str


class Recommendation(BaseModel):
    variant: str | None
    reasoning: str  # the summary as one paragraph
    summary: list[str] = Field(default_factory=list)  # the same, a short point each: the decision first
    tied_with: list[str] = Field(default_factory=list)  # within the speed noise of the pick's cost: a tie
    why: str | None = None  # the decision in one clause (the answer card's)
    cost: str | None = None  # what the pick costs, and against the source
    constraints: dict[str, Any]
    rejected: dict[str, str] = Field(default_factory=dict)
    quality_floor: dict[str, FloorVerdict] = Field(default_factory=dict)  # every variant, pass or fail


class Report(BaseModel):
    schema_version: int = REPORT_SCHEMA_VERSION
    created_at: str
    run_dir: str
    scenario: str
    sweep: dict[str, Any]
    reference_point: str | None
    hardware: dict[str, Any] | None
    slo: dict[str, float]
    recommendation: Recommendation
    quality_note: str | None  # the manifests' source.note, shown beside every quality number
    notes: list[str]
    variants: list[VariantRow]
    vram_plan: dict[str, Any]
    isolation: str | None = None  # each model alone, or all up together (neighbours share the machine)
    memory_bandwidth_gbs: float | None = None  # this machine's STREAM-style copy, for decode efficiency
    noise: dict[str, Any] | None = None  # the source measured twice: its drift is the machine's noise

    def variant(self, name: str) -> VariantRow | None:
        return next((v for v in self.variants if v.name == name), None)
