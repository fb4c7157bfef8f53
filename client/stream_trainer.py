"""The training loop over the Train stream: the unary loop's steps, pipelined and packed.

Steps are the same as the unary loop's (the same batches in the same order, the same updates),
grouped into requests of up to `steps_per_request` steps (and 8 MiB of batches), with up to
`window` requests in flight. The server runs the same arithmetic, so the result is bitwise the
unary loop's, with one round trip per request instead of two per step.

It resumes like client/resume.py: step s of the run is a function of the seed and must apply
at version start_version + s (every step carries that expected_version). When the stream
breaks (the server restarted from a checkpoint, or moved on without us), the loop re-syncs on
the server's version and opens a new stream from the step after it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import torch

from gradserve.client.config import TrainConfig
from gradserve.client.data import Dataset
from gradserve.client.gradient_client import GradientClient, TrainStep
from gradserve.client.metrics import TrainMetrics
from gradserve.client.resume import ResumeError, resync
from gradserve.client.trainer import (
    BatchSource,
    EpochReport,
    TrainingDiverged,
    TrainSummary,
    epoch_batches,
    finish_epoch,
)
from gradserve.errors import FailedPreconditionError, UnavailableError, VersionConflictError


@dataclass(frozen=True)
class _Sent:
    first_step: int
    # (step, epoch) for each step of the request that closes its epoch.
    epoch_ends: tuple[tuple[int, int], ...]
    samples: int


# A request stops growing at this many bytes of batches, well under the 64 MiB message limit.
REQUEST_BYTES = 8 * 1024 * 1024


def _step_bytes(step: TrainStep) -> int:
    return sum(
        inputs.numel() * inputs.element_size() + targets.numel() * targets.element_size()
        for inputs, targets in step.batches
    )


def epoch_steps(
    epoch: Iterator[tuple[torch.Tensor, torch.Tensor]], config: TrainConfig
) -> Iterator[TrainStep]:
    """One epoch's batches as steps: accumulation_steps batches each, closed by an update."""
    pending: list[tuple[torch.Tensor, torch.Tensor]] = []
    for batch in epoch:
        pending.append(batch)
        if len(pending) == config.accumulation_steps:
            yield TrainStep.of(pending, config.learning_rate, config.reduction)
            pending = []
    if pending:
        yield TrainStep.of(pending, config.learning_rate, config.reduction)


def run_steps(
    train_set: Dataset | BatchSource, config: TrainConfig
) -> Iterator[tuple[int, int, TrainStep, bool]]:
    """Every step of the run in order: (epoch, global step, step, closes its epoch).

    The order is a function of the seed alone, so replaying from step s needs no state."""
    shuffler = torch.Generator().manual_seed(config.seed)
    step = 0
    for epoch in range(config.epochs):
        previous: TrainStep | None = None
        for current in epoch_steps(epoch_batches(train_set, config, shuffler), config):
            if previous is not None:
                yield epoch, step, previous, False
                step += 1
            previous = current
        if previous is not None:
            yield epoch, step, previous, True
            step += 1


def train_streamed(
    client: GradientClient,
    train_set: Dataset | BatchSource,
    config: TrainConfig,
    metrics: TrainMetrics,
    *,
    validation_set: Dataset | None = None,
    classification: bool = False,
    on_epoch: Callable[[EpochReport], None] = lambda report: None,
    initial: Mapping[str, torch.Tensor] | None = None,
    start_version: int | None = None,
    exclusive: bool = True,
    max_resyncs: int = 100,
) -> TrainSummary:
    """Train over the stream. `exclusive` (this trainer alone drives the model): every step
    carries expected_version and a broken stream is resumed exactly; otherwise steps apply at
    whatever version the model is and a broken stream ends the run."""
    if start_version is None:
        start_version = (
            client.set_parameters(dict(initial)) if initial else client.model_info().model_version
        )
    summary = TrainSummary()
    started = time.perf_counter()
    step_losses: dict[int, list[float]] = {}
    epoch_sizes: list[int] = []  # batch losses each finished epoch added to the summary
    epoch_of_step: dict[int, int] = {}
    next_step = 0
    resyncs = 0
    while True:
        try:
            _stream_from(
                client,
                train_set,
                config,
                metrics,
                summary,
                start_version=start_version if exclusive else None,
                first_step=next_step,
                step_losses=step_losses,
                epoch_sizes=epoch_sizes,
                epoch_of_step=epoch_of_step,
                validation_set=validation_set,
                classification=classification,
                on_epoch=on_epoch,
            )
            break
        except FailedPreconditionError as error:
            raise TrainingDiverged(f"training diverged: {error}") from None
        except (UnavailableError, VersionConflictError) as reason:
            if not exclusive:
                raise
            resyncs += 1
            if resyncs > max_resyncs:
                raise ResumeError(f"gave up after {max_resyncs} re-syncs: {reason}") from None
            next_step, start_version = resync(client, config, None, start_version, initial)
            for dropped in [s for s in step_losses if s >= next_step]:
                del step_losses[dropped]
            # The epochs from the one holding next_step on run again: forget their records.
            epochs_kept = min(len(epoch_sizes), epoch_of_step.get(next_step, len(epoch_sizes)))
            del summary.epoch_losses[epochs_kept:]
            del summary.batch_losses[sum(epoch_sizes[:epochs_kept]) :]
            del summary.validation_losses[epochs_kept:]
            del summary.accuracies[epochs_kept:]
            del epoch_sizes[epochs_kept:]
            summary.steps = next_step
            summary.batches = sum(len(losses) for losses in step_losses.values())
    summary.seconds = time.perf_counter() - started
    return summary


def _stream_from(
    client: GradientClient,
    train_set: Dataset | BatchSource,
    config: TrainConfig,
    metrics: TrainMetrics,
    summary: TrainSummary,
    *,
    start_version: int | None,
    first_step: int,
    step_losses: dict[int, list[float]],
    epoch_sizes: list[int],
    epoch_of_step: dict[int, int],
    validation_set: Dataset | None,
    classification: bool,
    on_epoch: Callable[[EpochReport], None],
) -> None:
    """One Train stream from `first_step` to the end of the run."""
    sent: deque[_Sent] = deque()
    # With a validation pass the next epoch waits until the last one's updates are in, so
    # Evaluate sees exactly the parameters at the end of the epoch.
    epoch_done = threading.Semaphore(0)
    validating = validation_set is not None and len(validation_set) > 0
    epoch_first_step: dict[int, int] = {}

    def requests() -> Iterator[list[TrainStep]]:
        group: list[TrainStep] = []
        ends: list[tuple[int, int]] = []
        group_first = size = 0

        def flush() -> list[TrainStep]:
            samples = sum(int(x.shape[0]) for s in group for x, _ in s.batches)
            sent.append(_Sent(group_first, tuple(ends), samples))
            return group

        for epoch, step, planned, ends_epoch in run_steps(train_set, config):
            epoch_first_step.setdefault(epoch, step)
            epoch_of_step[step] = epoch
            if step < first_step:
                continue
            if not group:
                group_first, size = step, 0
            if start_version is None:
                group.append(planned)
            else:
                group.append(replace(planned, expected_version=start_version + step))
            size += _step_bytes(planned)
            if ends_epoch:
                ends.append((step, epoch))
            # Requests may span epochs, except when a validation pass must see the parameters
            # at the end of each epoch.
            if (
                len(group) == config.steps_per_request
                or size >= REQUEST_BYTES
                or (ends_epoch and validating)
            ):
                yield flush()
                group, ends = [], []
                if ends_epoch and validating:
                    epoch_done.acquire()
        if group:
            yield flush()

    request_started = time.perf_counter()
    for results in client.train_stream(requests(), window=config.window):
        context = sent.popleft()
        elapsed = time.perf_counter() - request_started
        for offset, result in enumerate(results):
            step_losses[context.first_step + offset] = list(result.losses)
            metrics.step_duration.observe(elapsed / len(results))
            summary.steps += 1
            metrics.steps.inc()
        summary.batches += sum(len(result.losses) for result in results)
        summary.model_version = results[-1].model_version
        metrics.samples.inc(context.samples)
        metrics.loss.set(results[-1].losses[-1] if results[-1].losses else float("nan"))
        metrics.model_version.set(summary.model_version)
        request_started = time.perf_counter()
        for step, epoch in context.epoch_ends:
            losses = [
                loss for s in range(epoch_first_step[epoch], step + 1) for loss in step_losses[s]
            ]
            report = finish_epoch(
                client,
                config,
                metrics,
                summary,
                epoch=epoch,
                losses=losses,
                validation_set=validation_set,
                classification=classification,
            )
            epoch_sizes.append(len(losses))
            if validating:
                epoch_done.release()
            on_epoch(report)
