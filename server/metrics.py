"""Where the server's Prometheus metrics are declared: RPC metrics and training state.

RPC metrics use go-grpc-prometheus' names so existing dashboards work. Collectors live in a
registry per server (tests run several servers in one process), with the process, platform
and gc collectors (gradserve.runtime_metrics); `serve.py` exposes it over HTTP.
Training state is labelled by run: each run records through its RunMetrics (`for_run`), whose
state gauges (model version, accumulated batches) read the store when scraped, so no path
that changes the store can leave them stale; counters and last-value gauges are recorded from
results, once per call, by the run's ServedRun (`record_*`). RPC metrics have no run label.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gradserve.defaults import SERVICE_METHODS, SERVICE_NAME
from gradserve.runtime_metrics import register_runtime_collectors
from gradserve.types import GradientResult, SetResult, TrainResult, UpdateResult

from .batch_metrics import BatchMetrics

logger = logging.getLogger(__name__)

# The method label takes values from this closed set alone: a client can call any path it
# likes (with auth on, every made-up path was once a new series), and labels must not grow.
_LABELLED_SERVICES = {
    SERVICE_NAME: SERVICE_METHODS,
    "grpc.health.v1.Health": frozenset({"Check", "Watch"}),
    "grpc.reflection.v1alpha.ServerReflection": frozenset({"ServerReflectionInfo"}),
    "grpc.reflection.v1.ServerReflection": frozenset({"ServerReflectionInfo"}),
}
UNKNOWN_METHOD = "unknown"


def method_label(method_path: str) -> str:
    """The grpc_method label for a call's path ("/pkg.Service/Method"): the method's name when
    the server serves it, else "unknown"."""
    service, _, method = method_path.lstrip("/").rpartition("/")
    return method if method in _LABELLED_SERVICES.get(service, ()) else UNKNOWN_METHOD


class WatchedState(Protocol):
    @property
    def version(self) -> int: ...

    @property
    def accumulated_batches(self) -> int: ...


# Seed steps take well under a millisecond; large parameter transfers take seconds.
LATENCY_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip


class ServerMetrics:
    """`run_labels`: "name" labels runs by their names; "id" by an opaque id drawn at each
    run's registration and logged once, so a scrape shows no principal's run names."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, run_labels: str = "name"
    ) -> None:
        self._opaque_runs = run_labels == "id"
        self._run_ids: dict[str, str] = {}
        self.registry = registry if registry is not None else CollectorRegistry()
        register_runtime_collectors(self.registry)
        r = self.registry
        # Cross-run batches, by base (batch_metrics.py).
        self.batches = BatchMetrics(r)
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by method and status code.",
            ["grpc_type", "grpc_service", "grpc_method", "grpc_code"],
            registry=r,
        )
        self.handling_seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time to handle an RPC on the server, by method.",
            ["grpc_type", "grpc_service", "grpc_method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Training state, by run (server/runs/registry.py): the run label takes run names, which the
        # server bounds by --max-runs; "" is the default run, which Prometheus reads as no
        # label at all, so queries written before runs keep working.
        self.model_version = Gauge(
            "gradserve_model_version",
            "Version of the parameters (updates applied).",
            ["run"],
            registry=r,
        )
        self.accumulated_batches = Gauge(
            "gradserve_accumulated_batches",
            "Batches whose gradients are accumulated and not yet applied.",
            ["run"],
            registry=r,
        )
        self.last_loss = Gauge(
            "gradserve_last_loss",
            "Loss of the last batch ComputeGradients ran.",
            ["run"],
            registry=r,
        )
        self.gradient_norm = Gauge(
            "gradserve_gradient_norm",
            "L2 norm of the gradient the last update applied; NaN when that update did not "
            "compute it (a dataset pass without gradient_norms).",
            ["run"],
            registry=r,
        )
        self.samples = Counter(
            "gradserve_samples_total", "Samples whose gradients were computed.", ["run"], registry=r
        )
        self.updates = Counter(
            "gradserve_updates_total", "Optimizer steps applied.", ["run"], registry=r
        )
        self.pass_steps = Counter(
            "gradserve_dataset_pass_steps_total",
            "Train steps run from dataset passes (TrainRequest.dataset_pass).",
            registry=r,
        )
        self.runs = Gauge("gradserve_runs", "Training runs on this server.", registry=r)
        self.dataset_bytes = Gauge(
            "gradserve_dataset_bytes",
            "Bytes of uploaded datasets held, all runs together (--max-dataset-bytes).",
            registry=r,
        )
        self.rejected = Counter(
            "gradserve_rejected_requests_total",
            "Requests rejected, by method and reason (the status code's name).",
            ["grpc_method", "reason"],
            registry=r,
        )
        self.replayed = Counter(
            "gradserve_replayed_requests_total",
            "Requests answered from the request-id window instead of being run again.",
            ["grpc_method"],
            registry=r,
        )
        # Many workers (server/coordination/update_policy.py): async staleness and sync rounds.
        self.staleness = Histogram(
            "gradserve_gradient_staleness",
            "Async mode: model versions between a contribution's based_on_version and the "
            "version its gradients were computed at.",
            buckets=(0, 1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
            registry=r,
        )
        self.stale_contributions = Counter(
            "gradserve_stale_contributions_total",
            "Async mode: contributions over max_staleness, by outcome (rejected, downweighted).",
            ["outcome"],
            registry=r,
        )
        self.sync_rounds = Counter(
            "gradserve_sync_rounds_total",
            "Sync mode: rounds ended, by outcome (applied, timed_out_applied, aborted, empty).",
            ["outcome"],
            registry=r,
        )

        # Streams (server/rpc/stream_admission.py): capacity apart from short calls.
        self.open_streams = Gauge("gradserve_open_streams", "Streaming RPCs open now.", registry=r)
        self.streams_refused = Counter(
            "gradserve_streams_refused_total",
            "Streams refused because --max-streams were open.",
            registry=r,
        )
        self.streams_idle_cancelled = Counter(
            "gradserve_streams_idle_cancelled_total",
            "Streams cancelled after waiting --stream-idle-seconds on their client.",
            registry=r,
        )
        # Checkpoints (server/checkpoints/files.py): saves that failed (full disk, missing directory).
        self.checkpoint_failures = Counter(
            "gradserve_checkpoint_failures_total",
            "Checkpoint saves that failed (periodic, on demand, durable or final).",
            registry=r,
        )

    def for_run(self, run: str, state: WatchedState) -> RunMetrics:
        """The metrics one run records into; its state gauges read `state` at each scrape
        (one int attribute each, read without the store's lock: a scrape never waits
        behind a long Train request)."""
        label = self.run_label(run)
        self.model_version.labels(label).set_function(lambda: state.version)
        self.accumulated_batches.labels(label).set_function(lambda: state.accumulated_batches)
        return RunMetrics(self, label)

    def run_label(self, run: str) -> str:
        """The run label of `run`: its name, or its opaque id ("" stays the default run's)."""
        if not self._opaque_runs or run == "":
            return run
        if run not in self._run_ids:
            self._run_ids[run] = f"id-{secrets.token_hex(6)}"
            logger.info("run %s is labelled run=%r in metrics", run, self._run_ids[run])
        return self._run_ids[run]

    def forget_run(self, run: str) -> None:
        """Remove a deleted run's series (and its opaque id: a new run of that name gets a
        new one)."""
        label = self.run_label(run)
        self._run_ids.pop(run, None)
        for family in (
            self.model_version,
            self.accumulated_batches,
            self.last_loss,
            self.gradient_norm,
            self.samples,
            self.updates,
        ):
            with contextlib.suppress(KeyError):  # never recorded into
                family.remove(label)


class RunMetrics:
    """One run's view of the server's metrics: its labelled children, bound once, and the
    server-wide collectors the ServedRuns record into. Counters and last-value gauges are
    recorded from results, once per call, by the ServedRun (`record_*`)."""

    def __init__(self, server: ServerMetrics, run: str) -> None:
        self.server = server
        self.run = run
        self.last_loss = server.last_loss.labels(run)
        self.gradient_norm = server.gradient_norm.labels(run)
        self.samples = server.samples.labels(run)
        self.updates = server.updates.labels(run)
        self.replayed = server.replayed
        self.pass_steps = server.pass_steps
        self.staleness = server.staleness
        self.stale_contributions = server.stale_contributions
        self.sync_rounds = server.sync_rounds
        self.registry = server.registry

    def record_gradients(self, result: GradientResult, method: str = "ComputeGradients") -> None:
        if result.replayed:
            self.replayed.labels(method).inc()
            return
        self.last_loss.set(result.loss)
        self.samples.inc(result.batch_size)

    def record_update(self, result: UpdateResult, method: str = "ApplyUpdate") -> None:
        if result.replayed:
            self.replayed.labels(method).inc()
            return
        self.updates.inc()
        self.gradient_norm.set(result.gradient_norm)

    def record_train(self, result: TrainResult, samples: int) -> None:
        if result.replayed:
            self.replayed.labels("Train").inc()
            return
        self.samples.inc(samples)
        for step in result.steps:
            if step.losses:
                self.last_loss.set(step.losses[-1])
            if step.applied:
                self.updates.inc()
                self.gradient_norm.set(step.gradient_norm)

    def record_pass(self, result: TrainResult, samples: int, *, norms: bool) -> None:
        """A dataset pass: the last step's loss and norm (when computed), once."""
        if result.replayed:
            self.replayed.labels("Train").inc()
            return
        self.samples.inc(samples)
        self.pass_steps.inc(len(result.steps))
        if result.steps:
            last = result.steps[-1]
            self.last_loss.set(last.losses[-1])
            self.updates.inc(len(result.steps))
            # Not computed: NaN, rather than an older update's norm passing for this one's.
            self.gradient_norm.set(last.gradient_norm if norms else math.nan)

    def record_set(self, result: SetResult, method: str) -> None:
        if result.replayed:
            self.replayed.labels(method).inc()
