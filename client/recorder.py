"""The one recorder of a training run: Prometheus metrics, the epoch lines and progress bar,
and the summary that --json prints and --plot draws.

The loop tells it each step done and each epoch closed; after a re-sync it forgets what will
be run again, so the summary is that of an uninterrupted run (the counters are not rewound:
they count what was sent).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import TextIO

from .config import OutputConfig
from .metrics import TrainMetrics
from .progress import ProgressBar
from .transport import StepDone


@dataclass(frozen=True)
class EpochReport:
    epoch: int
    last_loss: float
    mean_loss: float
    validation_loss: float | None = None
    accuracy: float | None = None


@dataclass
class TrainSummary:
    steps: int = 0
    batches: int = 0
    model_version: int = 0
    epoch_losses: list[float] = field(default_factory=list)
    # Every batch's loss, and the validation results after each epoch (for --plot).
    batch_losses: list[float] = field(default_factory=list)
    validation_losses: list[float] = field(default_factory=list)
    accuracies: list[float] = field(default_factory=list)
    last_loss: float = math.nan
    validation_loss: float | None = None
    accuracy: float | None = None
    seconds: float = 0.0


class Recorder:
    def __init__(
        self,
        metrics: TrainMetrics,
        *,
        output: OutputConfig | None = None,
        epochs: int = 0,
        human: TextIO | None = None,
        progress: TextIO | None = None,
    ) -> None:
        """Epoch lines go to `human` (none when None), the bar to `progress` as configured."""
        self.metrics = metrics
        self.output = output or OutputConfig(epoch_lines=False, progress="never")
        self.human = human if self.output.epoch_lines else None
        self.bar = ProgressBar(epochs, progress, self.output.progress) if progress else None
        # Notices (a re-sync) go where the bar goes: stderr, for people, never the JSON.
        self.notices = progress
        self.summary = TrainSummary()
        self._started = time.perf_counter()
        self._step_losses: dict[int, tuple[float, ...]] = {}
        self._epoch_first_step: dict[int, int] = {}
        # (closing step, batch losses) of each epoch recorded, in order.
        self._epochs: list[tuple[int, int]] = []

    def step_done(self, done: StepDone) -> None:
        step = done.step
        self._step_losses[step.number] = done.losses
        self._epoch_first_step.setdefault(step.epoch, step.number)
        self.summary.steps += 1
        self.summary.batches += len(done.losses)
        self.summary.model_version = done.model_version
        metrics = self.metrics
        metrics.loss.set(done.losses[-1] if done.losses else math.nan)
        metrics.samples.inc(step.samples)
        metrics.steps.inc()
        metrics.model_version.set(done.model_version)
        metrics.step_duration.observe(done.seconds)

    def epoch_done(
        self, done: StepDone, validation: tuple[float, float | None] | None
    ) -> EpochReport:
        """Close the epoch that `done` ends; `validation`: (loss, accuracy) after it."""
        epoch = done.step.epoch
        first = self._epoch_first_step[epoch]
        # A step can be missing: a re-sync that finds the server past it (its update landed,
        # its answer was lost; another client moved the run) continues after it.
        losses = [
            loss
            for s in range(first, done.step.number + 1)
            for loss in self._step_losses.get(s, ())
        ] or [math.nan]
        summary, metrics = self.summary, self.metrics
        mean_loss = sum(losses) / len(losses)
        summary.epoch_losses.append(mean_loss)
        summary.batch_losses.extend(losses)
        summary.last_loss = losses[-1]
        self._epochs.append((done.step.number, len(losses)))
        metrics.epoch_loss.set(mean_loss)
        metrics.epoch.set(epoch + 1)
        report = EpochReport(epoch, losses[-1], mean_loss)
        if validation is not None:
            validation_loss, accuracy = validation
            summary.validation_loss, summary.accuracy = validation_loss, accuracy
            summary.validation_losses.append(validation_loss)
            metrics.validation_loss.set(validation_loss)
            if accuracy is not None:
                summary.accuracies.append(accuracy)
                metrics.accuracy.set(accuracy)
            report = EpochReport(epoch, losses[-1], mean_loss, validation_loss, accuracy)
        self._print(report)
        return report

    def rewind(self, step: int) -> None:
        """Forget step `step` on and the epochs they close: they will be run again."""
        for dropped in [s for s in self._step_losses if s >= step]:
            del self._step_losses[dropped]
        kept = sum(1 for closing, _ in self._epochs if closing < step)
        summary = self.summary
        del summary.batch_losses[sum(size for _, size in self._epochs[:kept]) :]
        del self._epochs[kept:]
        del summary.epoch_losses[kept:]
        del summary.validation_losses[kept:]
        del summary.accuracies[kept:]
        summary.steps = step
        summary.batches = sum(len(losses) for losses in self._step_losses.values())

    def notice(self, line: str) -> None:
        """One line for people about the run (not an epoch): a re-sync after a restart."""
        if self.notices is None:
            return
        if self.bar is not None:
            self.bar.write(line, self.notices)
        else:
            print(line, file=self.notices, flush=True)

    def finish(self) -> TrainSummary:
        self.summary.seconds = time.perf_counter() - self._started
        if self.bar is not None:
            self.bar.close()
        return self.summary

    def _print(self, report: EpochReport) -> None:
        if self.bar is not None:
            self.bar.update(report.epoch + 1, report.last_loss)
        if self.human is None or report.epoch % self.output.log_every:
            return
        line = f"Epoch {report.epoch}, Loss: {report.last_loss:.4f}"
        if report.validation_loss is not None:
            line += f", Validation loss: {report.validation_loss:.4f}"
        if report.accuracy is not None:
            line += f", Accuracy: {report.accuracy:.3f}"
        if self.bar is not None:
            self.bar.write(line, self.human)
        else:
            print(line, file=self.human, flush=True)
