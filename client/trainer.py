"""The training loop, remote: ComputeGradients per batch, ApplyUpdate every k batches.

With k = 1 and batches in order this is the seed tutorial's loop step for step, so the final
parameters are bitwise those of the local loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from gradserve.client.config import TrainConfig
from gradserve.client.data import Dataset, batches
from gradserve.client.gradient_client import GradientClient
from gradserve.client.metrics import TrainMetrics
from gradserve.errors import FailedPreconditionError


class TrainingDiverged(RuntimeError):
    """The loss or the gradients stopped being finite."""


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


class BatchSource(Protocol):
    """Training data read in batches rather than held (client/csv_stream.CsvStream)."""

    def batches(
        self, batch_size: int, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def epoch_batches(
    train_set: Dataset | BatchSource, config: TrainConfig, shuffler: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's batches: a held dataset permuted whole, a streamed one through its buffer."""
    if isinstance(train_set, Dataset):
        order = torch.randperm(len(train_set), generator=shuffler) if config.shuffle else None
        return batches(train_set, config.batch_size, order)
    return train_set.batches(config.batch_size, shuffler if config.shuffle else None)


def train(
    client: GradientClient,
    train_set: Dataset | BatchSource,
    config: TrainConfig,
    metrics: TrainMetrics,
    *,
    validation_set: Dataset | None = None,
    classification: bool = False,
    on_epoch: Callable[[EpochReport], None] = lambda report: None,
) -> TrainSummary:
    summary = TrainSummary()
    shuffler = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    for epoch in range(config.epochs):
        losses: list[float] = []
        pending = 0
        step_started = time.perf_counter()
        for inputs, targets in epoch_batches(train_set, config, shuffler):
            try:
                result = client.compute_gradients(inputs, targets)
            except FailedPreconditionError as error:
                raise TrainingDiverged(f"training diverged at epoch {epoch}: {error}") from None
            losses.append(result.loss)
            metrics.loss.set(result.loss)
            metrics.samples.inc(result.batch_size)
            summary.batches += 1
            pending += 1
            if pending == config.accumulation_steps:
                _update(client, config, metrics, summary, step_started)
                pending = 0
                step_started = time.perf_counter()
        if pending:
            _update(client, config, metrics, summary, step_started)
        on_epoch(
            finish_epoch(
                client,
                config,
                metrics,
                summary,
                epoch=epoch,
                losses=losses,
                validation_set=validation_set,
                classification=classification,
            )
        )
    summary.seconds = time.perf_counter() - started
    return summary


def finish_epoch(
    client: GradientClient,
    config: TrainConfig,
    metrics: TrainMetrics,
    summary: TrainSummary,
    *,
    epoch: int,
    losses: list[float],
    validation_set: Dataset | None,
    classification: bool,
) -> EpochReport:
    """Epoch bookkeeping shared by every transport: summary, metrics, validation pass."""
    mean_loss = sum(losses) / len(losses)
    summary.epoch_losses.append(mean_loss)
    summary.batch_losses.extend(losses)
    summary.last_loss = losses[-1]
    metrics.epoch_loss.set(mean_loss)
    metrics.epoch.set(epoch + 1)
    if validation_set is None or not len(validation_set):
        return EpochReport(epoch, losses[-1], mean_loss)
    validation_loss, accuracy = evaluate(client, validation_set, config, classification)
    summary.validation_loss, summary.accuracy = validation_loss, accuracy
    summary.validation_losses.append(validation_loss)
    if accuracy is not None:
        summary.accuracies.append(accuracy)
    metrics.validation_loss.set(validation_loss)
    if accuracy is not None:
        metrics.accuracy.set(accuracy)
    return EpochReport(epoch, losses[-1], mean_loss, validation_loss, accuracy)


def _update(
    client: GradientClient,
    config: TrainConfig,
    metrics: TrainMetrics,
    summary: TrainSummary,
    step_started: float,
) -> None:
    result = client.apply_update(config.learning_rate, reduction=config.reduction)
    summary.steps += 1
    summary.model_version = result.model_version
    metrics.steps.inc()
    metrics.model_version.set(result.model_version)
    metrics.step_duration.observe(time.perf_counter() - step_started)


def evaluate(
    client: GradientClient, dataset: Dataset, config: TrainConfig, classification: bool
) -> tuple[float, float | None]:
    """Mean loss over the dataset (weighted by batch size) and, for classifiers, accuracy."""
    total_loss = 0.0
    correct = 0
    chunk = max(config.batch_size, 256)
    for inputs, targets in batches(dataset, chunk):
        result = client.evaluate(inputs, targets, return_predictions=classification)
        total_loss += (result.loss or 0.0) * result.batch_size
        if classification and result.predictions is not None:
            correct += int((result.predictions.argmax(dim=1) == targets).sum())
    accuracy = correct / len(dataset) if classification else None
    return total_loss / len(dataset), accuracy
