"""Where a load point's time went, from vLLM's own histograms, and what limits the engine there.

vLLM exports per-request queue, prefill and decode time as Prometheus histograms; scraping `/metrics` before and
after a load point and subtracting gives that point's sums and counts, so the means are exactly the point's own.
Decode efficiency sets the weight bytes the engine must read per generated token, times the output token rate,
against this machine's measured memory bandwidth: near 1, decode is bound by memory bandwidth; far below, by
compute or overheads.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx

HISTOGRAMS = {"queue": "vllm:request_queue_time_seconds", "prefill": "vllm:request_prefill_time_seconds",
              "decode": "vllm:request_decode_time_seconds"}
Scrape = dict[str, tuple[float, float]]  # phase -> (sum seconds, count)


def parse_histograms(text: str) -> Scrape:
    """Sum and count of each phase's histogram, over every label set (engines, models) in one exposition."""
    found: Scrape = {phase: (0.0, 0.0) for phase in HISTOGRAMS}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{", 1)[0].split(" ", 1)[0]
        for phase, metric in HISTOGRAMS.items():
            if name in (f"{metric}_sum", f"{metric}_count"):
                total, count = found[phase]
                value = float(line.rsplit(" ", 1)[1])
                found[phase] = (total + value, count) if name.endswith("_sum") else (total, count + value)
    return found


async def scrape(client: httpx.AsyncClient, metrics_url: str) -> Scrape | None:
    try:
        reply = await client.get(metrics_url, timeout=10.0)
    except httpx.HTTPError:
        return None
    return parse_histograms(reply.text) if reply.status_code == 200 else None


@dataclass(frozen=True)
class TimeBreakdown:
    """Mean seconds per request in each phase at one load point, and the gateway's own mean."""

    requests: int
    queue_s: float
    prefill_s: float
    decode_s: float
    gateway_s: float | None
    decode_efficiency: float | None  # weight bytes per token x output tok/s / memory bandwidth
    bottleneck: str
    advice: str


def _advice(bottleneck: str) -> str:
    return {
        "queueing": "requests wait for a slot: add engine replicas or raise max_num_seqs before anything else",
        "prefill": "prompt processing dominates: shorter prompts, prefix caching of the shared system prompt, "
                   "or chunked prefill",
        "memory bandwidth": "decode reads the weights at the machine's bandwidth: fewer weight bytes per token "
                            "(lower-bit weights) or larger batches that share each read",
        "compute": "decode runs well below the memory bandwidth: faster kernels for this format (AMX or a GPU), "
                   "or a format this machine runs natively",
    }[bottleneck]


def breakdown(before: Scrape, after: Scrape, output_tok_s: float, weight_bytes: int | None,
              bandwidth_bytes_s: float | None, gateway_ms: list[float] | None = None) -> TimeBreakdown | None:
    means: dict[str, float] = {}
    requests = 0
    for phase in HISTOGRAMS:
        total = after[phase][0] - before[phase][0]
        count = after[phase][1] - before[phase][1]
        if count <= 0:
            return None
        means[phase] = total / count
        requests = max(requests, int(count))
    efficiency = (weight_bytes * output_tok_s / bandwidth_bytes_s
                  if weight_bytes and bandwidth_bytes_s and output_tok_s > 0 else None)
    engine_time = means["queue"] + means["prefill"] + means["decode"]
    if engine_time > 0 and means["queue"] / engine_time >= 0.3:
        bottleneck = "queueing"
    elif engine_time > 0 and means["prefill"] / engine_time >= 0.5:
        bottleneck = "prefill"
    elif efficiency is not None and efficiency >= 0.6:
        bottleneck = "memory bandwidth"
    else:
        bottleneck = "compute"
    gateway = sum(gateway_ms) / len(gateway_ms) / 1000 if gateway_ms else None
    return TimeBreakdown(requests=requests, queue_s=means["queue"], prefill_s=means["prefill"],
                         decode_s=means["decode"], gateway_s=gateway, decode_efficiency=efficiency,
                         bottleneck=bottleneck, advice=_advice(bottleneck))
