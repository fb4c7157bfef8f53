"""The training loop over the Train stream: the unary loop's steps, pipelined and packed.

Steps are the same as client/trainer.py's (the same batches, in the same order, the same
updates), grouped into requests of up to `steps_per_request` steps that never span an epoch,
with up to `window` requests in flight. The server runs the same arithmetic, so the result is
bitwise the unary loop's, with one round trip per request instead of two per step.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from gradserve.client.config import TrainConfig
from gradserve.client.data import Dataset
from gradserve.client.gradient_client import GradientClient, TrainStep
from gradserve.client.metrics import TrainMetrics
from gradserve.client.trainer import (
    BatchSource,
    EpochReport,
    TrainingDiverged,
    TrainSummary,
    epoch_batches,
    finish_epoch,
)
from gradserve.errors import FailedPreconditionError


@dataclass(frozen=True)
class _Sent:
    epoch: int
    ends_epoch: bool
    samples: int


def epoch_steps(
    epoch: Iterator[tuple[torch.Tensor, torch.Tensor]], config: TrainConfig
) -> Iterator[TrainStep]:
    """One epoch's batches as steps: accumulation_steps batches each, closed by an update."""
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    for batch in epoch:
        pending.append(batch)
        if len(pending) == config.accumulation_steps:
            yield TrainStep(tuple(pending), config.learning_rate, config.reduction)
            pending = []
    if pending:
        yield TrainStep(tuple(pending), config.learning_rate, config.reduction)


def epoch_requests(
    epoch: Iterator[tuple[torch.Tensor, torch.Tensor]], config: TrainConfig
) -> Iterator[tuple[list[TrainStep], bool]]:
    """Groups of up to steps_per_request steps, each with whether it closes the epoch. Data is
    read one group ahead, so a streamed file is never held whole."""
    group: list[TrainStep] = []
    for step in epoch_steps(epoch, config):
        if len(group) == config.steps_per_request:
            yield group, False
            group = []
        group.append(step)
    if group:
        yield group, True


def train_streamed(
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
    sent: deque[_Sent] = deque()
    # With a validation pass the next epoch waits until the last one's updates are in, so
    # Evaluate sees exactly the parameters at the end of the epoch.
    epoch_done = threading.Semaphore(0)
    validating = validation_set is not None and len(validation_set) > 0

    def requests() -> Iterator[list[TrainStep]]:
        shuffler = torch.Generator().manual_seed(config.seed)
        for epoch in range(config.epochs):
            for group, ends_epoch in epoch_requests(
                epoch_batches(train_set, config, shuffler), config
            ):
                samples = sum(int(x.shape[0]) for step in group for x, _ in step.batches)
                sent.append(_Sent(epoch, ends_epoch, samples))
                yield group
            if validating:
                epoch_done.acquire()

    started = time.perf_counter()
    losses: list[float] = []
    request_started = time.perf_counter()
    try:
        for results in client.train_stream(requests(), window=config.window):
            context = sent.popleft()
            elapsed = time.perf_counter() - request_started
            for result in results:
                losses.extend(result.losses)
                metrics.step_duration.observe(elapsed / len(results))
                if result.applied:
                    summary.steps += 1
                    metrics.steps.inc()
            summary.batches += sum(len(result.losses) for result in results)
            metrics.samples.inc(context.samples)
            summary.model_version = results[-1].model_version
            metrics.loss.set(losses[-1])
            metrics.model_version.set(summary.model_version)
            request_started = time.perf_counter()
            if context.ends_epoch:
                report = finish_epoch(
                    client,
                    config,
                    metrics,
                    summary,
                    epoch=context.epoch,
                    losses=losses,
                    validation_set=validation_set,
                    classification=classification,
                )
                losses = []
                if validating:
                    epoch_done.release()
                on_epoch(report)
    except FailedPreconditionError as error:
        raise TrainingDiverged(f"training diverged: {error}") from None
    summary.seconds = time.perf_counter() - started
    return summary
