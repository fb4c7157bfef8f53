"""The training loop, remote: one loop for every run, over either transport, able to resume.

Step s of a plan is always the same batches (client/plan.py). With an EXACT plan step s
applies at start_version + s; when the server disagrees (it restarted from an older
checkpoint, a call was lost), the loop re-syncs: it waits for the server, drops any partial
accumulation, reads the version, checks that the state at that version is its checkpoint's
(client/digest_check.py) and continues at step = version - start_version. The final
parameters are then bitwise those of an uninterrupted run, and with one step per batch and
batches in order they are bitwise the seed tutorial's local loop.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from gradserve.errors import NotFoundError, UnavailableError

from .data import Dataset, batches
from .digest_check import verify_resumed_digest
from .gradient_client import GradientClient
from .large_parameters import put_parameters
from .plan import StepPlan, Versioning
from .recorder import Recorder, TrainSummary
from .transport import OutOfStep, ResumeError, Transport

MAX_RESYNCS = 100


def train(
    client: GradientClient,
    plan: StepPlan,
    transport: Transport,
    recorder: Recorder,
    *,
    validation_set: Dataset | None = None,
    classification: bool = False,
    initial: Mapping[str, torch.Tensor] | None = None,
    start_version: int | None = None,
    connect_timeout: float = 15.0,
    max_resyncs: int = MAX_RESYNCS,
    upload: Callable[[], None] | None = None,
) -> TrainSummary:
    """Run the plan. `initial` parameters are set first (and again should the server fall back
    to before them); a caller that has set them already passes the version that produced as
    start_version. Without either the run starts from the server's version. `upload`: puts
    the plan's dataset on the server again, when it answers that it has none (it restarted:
    datasets are in memory only); the loop then re-syncs as after any break."""
    if start_version is None:
        start_version = (
            client.set_parameters(dict(initial)) if initial else client.model_info().model_version
        )
    validating = validation_set is not None and len(validation_set) > 0
    next_step = 0
    resyncs = 0
    while True:
        try:
            for done in transport.run(
                plan, next_step, start_version, pause_at_epoch_end=validating
            ):
                recorder.step_done(done)
                next_step = done.step.number + 1
                if done.step.closes_epoch:
                    validation = None
                    if validating:
                        assert validation_set is not None
                        validation = evaluate(
                            client, validation_set, plan.schedule.batch_size, classification
                        )
                    recorder.epoch_done(done, validation)
            return recorder.finish()
        except (OutOfStep, UnavailableError, NotFoundError) as reason:
            lost = isinstance(reason, NotFoundError)
            if isinstance(reason, NotFoundError) and (
                upload is None or reason.reason != "DATASET_NOT_FOUND"
            ):
                raise
            if plan.versioning is not Versioning.EXACT:
                raise
            resyncs += 1
            if resyncs > max_resyncs:
                raise ResumeError(f"gave up after {max_resyncs} re-syncs: {reason}") from None
            if lost:
                assert upload is not None
                client.wait_until_ready(connect_timeout)
                upload()
            next_step, start_version = resync(
                client, connect_timeout, plan.total_steps, start_version, initial
            )
            why = (str(reason).splitlines() or [type(reason).__name__])[0][:160]
            recorder.notice(
                f"gradserve-train: re-synced with the server at version "
                f"{start_version + next_step}: continuing at step {next_step} ({why})"
            )
            recorder.rewind(next_step)


def resync(
    client: GradientClient,
    connect_timeout: float,
    total_steps: int | None,
    start_version: int,
    initial: Mapping[str, torch.Tensor] | None,
) -> tuple[int, int]:
    """(step to continue at, start version) from the server's state now."""
    client.wait_until_ready(connect_timeout)
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
        return 0, put_parameters(client, initial, info, expected_version=info.model_version)
    step = info.model_version - start_version
    if total_steps is not None and step > total_steps:
        raise ResumeError(
            f"the server is at version {info.model_version}, past this run's last step "
            f"({start_version + total_steps}): someone else is training it"
        )
    verify_resumed_digest(client)
    return step, start_version


def evaluate(
    client: GradientClient, dataset: Dataset, batch_size: int, classification: bool
) -> tuple[float, float | None]:
    """Mean loss over the dataset (weighted by batch size) and, for classifiers, accuracy."""
    total_loss = 0.0
    correct = 0
    for inputs, targets in batches(dataset, max(batch_size, 256)):
        result = client.evaluate(inputs, targets, return_predictions=classification)
        total_loss += (result.loss or 0.0) * result.batch_size
        if classification and result.predictions is not None:
            correct += int((result.predictions.argmax(dim=1) == targets).sum())
    accuracy = correct / len(dataset) if classification else None
    return total_loss / len(dataset), accuracy
