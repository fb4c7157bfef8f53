"""Where the trainer's Prometheus metrics are declared (served on --metrics-port, or pushed).

Labels are of low cardinality only: the run id and the model, never steps or epochs. The
validation gauges have no sample until a validation ran (a 0.0 would read as a real zero), and
the process, platform and gc collectors sit beside them as on the server.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from gradserve.runtime_metrics import register_runtime_collectors

STEP_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0,
)  # fmt: skip


class SetOnce:
    """A labelled gauge whose child (and so its sample) exists from the first `set` on."""

    def __init__(self, gauge: Gauge, values: tuple[str, ...]) -> None:
        self._gauge, self._values = gauge, values

    def set(self, value: float) -> None:
        self._gauge.labels(*self._values).set(value)


class TrainMetrics:
    def __init__(self, run_id: str, model: str) -> None:
        self.registry = CollectorRegistry()
        register_runtime_collectors(self.registry)
        labels = ("run_id", "model")
        values = (run_id, model)
        r = self.registry
        self.loss = Gauge(
            "gradserve_train_loss", "Loss of the last training batch.", labels, registry=r
        ).labels(*values)
        self.epoch_loss = Gauge(
            "gradserve_train_epoch_loss",
            "Mean training loss over the last completed epoch.",
            labels,
            registry=r,
        ).labels(*values)
        self.validation_loss = SetOnce(
            Gauge(
                "gradserve_train_validation_loss",
                "Loss on the validation split after the last epoch.",
                labels,
                registry=r,
            ),
            values,
        )
        self.accuracy = SetOnce(
            Gauge(
                "gradserve_train_accuracy",
                "Classification accuracy on the validation split after the last epoch.",
                labels,
                registry=r,
            ),
            values,
        )
        self.steps = Counter(
            "gradserve_train_steps_total", "Optimizer steps applied.", labels, registry=r
        ).labels(*values)
        self.samples = Counter(
            "gradserve_train_samples_total", "Training samples sent.", labels, registry=r
        ).labels(*values)
        self.step_duration = Histogram(
            "gradserve_train_step_duration_seconds",
            "Wall time of one training step (its ComputeGradients calls and the update).",
            labels,
            buckets=STEP_BUCKETS,
            registry=r,
        ).labels(*values)
        self.epoch = Gauge("gradserve_train_epoch", "Epochs completed.", labels, registry=r).labels(
            *values
        )
        self.model_version = Gauge(
            # Not gradserve_model_version: that is the server's gauge, without these labels.
            "gradserve_train_model_version",
            "Model version the server reported after the last update.",
            labels,
            registry=r,
        ).labels(*values)
