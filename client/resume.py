"""The unary training loop, able to resume: a server that restarts from an older checkpoint is
caught up by replaying the steps after its version.

The data order is a function of the seed, so step s of the run is always the same batches and
belongs to model version start_version + s. Every call is checked against that: a
ComputeGradients must answer at the step's version with this step's count of accumulated
batches, an ApplyUpdate carries expected_version. When they disagree (the server restarted, a
call was lost), the loop re-syncs: it waits for the server, drops any partial accumulation,
reads the version and continues from step = version - start_version. The final parameters are
then bitwise those of an uninterrupted run.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping

import torch

from gradserve.client.config import TrainConfig
from gradserve.client.data import Dataset
from gradserve.client.gradient_client import GradientClient
from gradserve.client.metrics import TrainMetrics
from gradserve.client.trainer import (
    EpochReport,
    TrainingDiverged,
    TrainSummary,
    finish_epoch,
)
from gradserve.errors import FailedPreconditionError, UnavailableError, VersionConflictError

logger = logging.getLogger(__name__)


class ResumeError(RuntimeError):
    """The server's state cannot be reconciled with this run (see the message)."""


class _OutOfStep(Exception):
    """The server is not where this run expects it; re-sync."""


class StepPlan:
    """Which batches make up global step s, from the seed alone (no state carried over)."""

    def __init__(self, dataset: Dataset, config: TrainConfig) -> None:
        self.dataset = dataset
        self.config = config
        self.batches_per_epoch = math.ceil(len(dataset) / config.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.accumulation_steps)
        self.total_steps = self.steps_per_epoch * config.epochs
        # Generator state before each epoch's permutation, filled as epochs are first reached.
        self._states = [torch.Generator().manual_seed(config.seed).get_state()]
        self._order: tuple[int, torch.Tensor | None] = (-1, None)

    def _epoch_order(self, epoch: int) -> torch.Tensor | None:
        if not self.config.shuffle:
            return None
        if self._order[0] == epoch:
            return self._order[1]
        generator = torch.Generator()
        while len(self._states) <= epoch:
            generator.set_state(self._states[-1])
            torch.randperm(len(self.dataset), generator=generator)
            self._states.append(generator.get_state())
        generator.set_state(self._states[epoch])
        order = torch.randperm(len(self.dataset), generator=generator)
        self._order = (epoch, order)
        return order

    def step(self, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        epoch, within = divmod(step, self.steps_per_epoch)
        order = self._epoch_order(epoch)
        first = within * self.config.accumulation_steps
        last = min(first + self.config.accumulation_steps, self.batches_per_epoch)
        size, data = self.config.batch_size, self.dataset
        result = []
        for batch in range(first, last):
            if order is None:
                chosen = slice(batch * size, (batch + 1) * size)
                result.append((data.inputs[chosen], data.targets[chosen]))
            else:
                index = order[batch * size : (batch + 1) * size]
                result.append((data.inputs[index], data.targets[index]))
        return result


def train_resumable(
    client: GradientClient,
    train_set: Dataset,
    config: TrainConfig,
    metrics: TrainMetrics,
    *,
    validation_set: Dataset | None = None,
    classification: bool = False,
    on_epoch: Callable[[EpochReport], None] = lambda report: None,
    initial: Mapping[str, torch.Tensor] | None = None,
    start_version: int | None = None,
    max_resyncs: int = 100,
) -> TrainSummary:
    """train() with resume. `initial` parameters are set first (and again should the server
    fall back to before them); without them the run starts from the server's version.
    A caller that has set them already passes the version that produced as start_version."""
    plan = StepPlan(train_set, config)
    summary = TrainSummary()
    started = time.perf_counter()
    if start_version is None:
        start_version = (
            client.set_parameters(dict(initial)) if initial else client.model_info().model_version
        )
    step_losses: dict[int, list[float]] = {}
    step = 0
    resyncs = 0
    while step < plan.total_steps:
        try:
            _run_step(
                client,
                plan,
                config=config,
                metrics=metrics,
                summary=summary,
                step=step,
                start_version=start_version,
                step_losses=step_losses,
            )
        except (_OutOfStep, UnavailableError) as reason:
            resyncs += 1
            if resyncs > max_resyncs:
                raise ResumeError(f"gave up after {max_resyncs} re-syncs: {reason}") from None
            step, start_version = resync(client, config, plan.total_steps, start_version, initial)
            logger.info("re-synced after %s: continuing at step %d", reason, step)
            for dropped in [s for s in step_losses if s >= step]:
                del step_losses[dropped]
            forget_epochs(summary, step // plan.steps_per_epoch, plan.batches_per_epoch)
            summary.steps = step
            summary.batches = sum(len(losses) for losses in step_losses.values())
            continue
        epoch, within = divmod(step, plan.steps_per_epoch)
        step += 1
        if within == plan.steps_per_epoch - 1:
            first = epoch * plan.steps_per_epoch
            losses = [loss for s in range(first, step) for loss in step_losses[s]]
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


def _run_step(
    client: GradientClient,
    plan: StepPlan,
    *,
    config: TrainConfig,
    metrics: TrainMetrics,
    summary: TrainSummary,
    step: int,
    start_version: int,
    step_losses: dict[int, list[float]],
) -> None:
    version = start_version + step
    step_started = time.perf_counter()
    losses = []
    batches = plan.step(step)
    for position, (inputs, targets) in enumerate(batches, start=1):
        try:
            result = client.compute_gradients(inputs, targets)
        except FailedPreconditionError as error:
            raise TrainingDiverged(f"training diverged at step {step}: {error}") from None
        if (result.model_version, result.accumulated_batches) != (version, position):
            raise _OutOfStep(
                f"step {step} batch {position}: the server is at version {result.model_version} "
                f"with {result.accumulated_batches} batches, expected {version} with {position}"
            )
        losses.append(result.loss)
        metrics.loss.set(result.loss)
        metrics.samples.inc(result.batch_size)
    try:
        update = client.apply_update(
            config.learning_rate, reduction=config.reduction, expected_version=version
        )
    except (FailedPreconditionError, VersionConflictError) as error:
        raise _OutOfStep(f"step {step} update: {error}") from None
    if update.applied_batches != len(batches):
        # Only possible with accumulation over several batches and a server that lost some of
        # them between the last ComputeGradients and this update: the step is applied wrong.
        raise ResumeError(
            f"step {step}: the update applied {update.applied_batches} batches, expected "
            f"{len(batches)}; restore an earlier checkpoint"
        )
    step_losses[step] = losses
    summary.steps = step + 1
    summary.batches += len(batches)
    summary.model_version = update.model_version
    metrics.steps.inc()
    metrics.model_version.set(update.model_version)
    metrics.step_duration.observe(time.perf_counter() - step_started)


def resync(
    client: GradientClient,
    config: TrainConfig,
    total_steps: int | None,
    start_version: int,
    initial: Mapping[str, torch.Tensor] | None,
) -> tuple[int, int]:
    """(step to continue at, start version) from the server's state now."""
    client.wait_until_ready(config.connect_timeout_seconds)
    info = client.model_info()
    if info.accumulated_batches:
        # A step is all its batches or none: partial accumulation is redone from the start.
        client.discard_gradients()
    if info.model_version < start_version:
        if not initial:
            raise ResumeError(
                f"the server is at version {info.model_version}, before this run's start "
                f"({start_version}), and there are no initial parameters to set again"
            )
        return 0, client.set_parameters(dict(initial), expected_version=info.model_version)
    step = info.model_version - start_version
    if total_steps is not None and step > total_steps:
        raise ResumeError(
            f"the server is at version {info.model_version}, past this run's last step "
            f"({start_version + total_steps}): someone else is training it"
        )
    return step, start_version


def forget_epochs(summary: TrainSummary, epochs: int, batches_per_epoch: int) -> None:
    """Forget the per-epoch records of the epochs that will be run again."""
    del summary.epoch_losses[epochs:]
    del summary.batch_losses[epochs * batches_per_epoch :]
    del summary.validation_losses[epochs:]
    del summary.accuracies[epochs:]
