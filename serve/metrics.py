"""Prometheus series for the gateway, all named quantserve_*, in a registry of their own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # A private registry: tests build several apps in one process and each must count only its own.
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("quantserve_requests", "Requests answered, by model, endpoint, HTTP status",
                                ["model", "endpoint", "status"], registry=r)
        self.errors = Counter("quantserve_request_errors", "Requests that ended in an error, by model, "
                              "status and OpenAI error type", ["model", "status", "type"], registry=r)
        self.ttft = Histogram("quantserve_time_to_first_token_seconds", "Gateway arrival to first streamed "
                              "event sent", ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.latency = Histogram("quantserve_request_duration_seconds", "Gateway arrival to last byte sent",
                                 ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("quantserve_prompt_tokens", "Prompt tokens, by model and key id",
                                     ["model", "key_id"], registry=r)
        self.completion_tokens = Counter("quantserve_completion_tokens", "Completion tokens, by model and "
                                         "key id", ["model", "key_id"], registry=r)
        self.overhead = Histogram("quantserve_gateway_overhead_seconds", "Time a request spent in the gateway "
                                  "itself, not queued for a slot nor awaiting the engine", ["model"],
                                  buckets=OVERHEAD_BUCKETS, registry=r)
        self.engine_up = Gauge("quantserve_engine_up", "1 when the upstream answers /health",
                               ["model", "upstream"], registry=r)
        self.in_flight = Gauge("quantserve_in_flight_requests", "Requests holding an engine slot", ["model"],
                               registry=r)
        self.queued = Gauge("quantserve_queued_requests", "Requests waiting for an engine slot", ["model"],
                            registry=r)

        self.ledger_rows = Gauge("quantserve_ledger_rows", "Usage rows since start, by where they went: spilled "
                                 "(to the spill file), replayed (from it), quarantined (refused for their content), "
                                 "lost (only in the log), queued (not yet written)", ["state"], registry=r)
        self.ledger_storing = Gauge("quantserve_ledger_storing", "0 while usage rows can be stored neither in "
                                    "the database nor in the spill file (e.g. the disk is full)", registry=r)

    def observe_ledger(self, health: dict[str, object]) -> None:
        for state in ("spilled", "replayed", "quarantined", "lost", "queued"):
            self.ledger_rows.labels(state).set(float(health[state]))  # type: ignore[arg-type]
        self.ledger_storing.set(1.0 if health["storing"] else 0.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
