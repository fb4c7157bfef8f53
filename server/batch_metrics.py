"""Where the cross-run batching metrics are declared (server/coordination/cross_run_batches.py).

ServerMetrics (metrics.py) holds them, in its registry. Labelled by base only: base names are the operator's (`--base-model NAME=...`), a closed set;
never a run name or a principal. A refusal's reason is one of REFUSAL_REASONS.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REFUSAL_REASONS = ("requests", "bytes")
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
_WAITED = (0, 1, 2, 4, 8, 16, 32)
# From a step of a small base (milliseconds) to a full window and a large batch.
_WAIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class BatchMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.queued = Gauge(
            "gradserve_batch_queue_requests",
            "Requests waiting in a base's cross-run batch queue.",
            ["base"],
            registry=r,
        )
        self.batch_requests = Histogram(
            "gradserve_batch_requests",
            "Requests per cross-run batch (one forward and one backward per sequence length).",
            ["base"],
            buckets=_SIZES,
            registry=r,
        )
        self.batched = Counter(
            "gradserve_batched_requests_total",
            "ComputeGradients requests that ran in a cross-run batch of two or more.",
            ["base"],
            registry=r,
        )
        self.wait_seconds = Histogram(
            "gradserve_batch_queue_wait_seconds",
            "Time from a request's arrival in the queue to the start of its batch.",
            ["base"],
            buckets=_WAIT_BUCKETS,
            registry=r,
        )
        self.batches_waited = Histogram(
            "gradserve_batch_batches_waited",
            "Batches that started while a request was queued, before its own.",
            ["base"],
            buckets=_WAITED,
            registry=r,
        )
        self.refused = Counter(
            "gradserve_batch_refusals_total",
            "Requests refused at a full batch queue, by the bound reached.",
            ["base", "reason"],
            registry=r,
        )
        self.failed = Counter(
            "gradserve_batch_failures_total",
            "Cross-run batches whose computation raised (their requests then ran alone).",
            ["base"],
            registry=r,
        )
