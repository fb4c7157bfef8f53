"""The unary transport: ComputeGradients for each batch of a step, then one ApplyUpdate.

With an EXACT plan every call is checked against the plan: a ComputeGradients must answer at
the step's version with this step's count of accumulated batches, and the ApplyUpdate carries
expected_version; a disagreement is OutOfStep. For one shard of a sync round the update
carries the version the batches were computed at (the round they went into).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from gradserve.errors import FailedPreconditionError, VersionConflictError
from gradserve.types import DatasetBatch

from .gradient_client import GradientClient
from .plan import Batch, PlannedStep, StepPlan, Versioning
from .transport import OutOfStep, ResumeError, StepDone, TrainingDiverged


class UnaryTransport:
    def __init__(self, client: GradientClient) -> None:
        self.client = client

    def run(
        self, plan: StepPlan, first_step: int, start_version: int, *, pause_at_epoch_end: bool
    ) -> Iterator[StepDone]:
        # One call at a time: every step is done before the next is sent, so no pause needed.
        for step in plan.steps(first_step):
            yield self._run_step(plan, step, start_version)

    def _run_step(self, plan: StepPlan, step: PlannedStep, start_version: int) -> StepDone:
        started = time.perf_counter()
        expected = plan.expected_version(step, start_version)
        exact = plan.versioning is Versioning.EXACT
        losses = []
        computed_at = 0
        # Named by dataset samples when the data is on the server, else the tensors.
        sent: tuple[DatasetBatch | Batch, ...] = step.named or step.batches
        for position, batch in enumerate(sent, start=1):
            # As a Train step's batches: batch j (from 0) takes the step's seed + j.
            seed = None if step.seed is None else step.seed + position - 1
            try:
                if isinstance(batch, DatasetBatch):
                    result = self.client.compute_gradients(batch, seed=seed)
                else:
                    result = self.client.compute_gradients(batch[0], batch[1], seed=seed)
            except FailedPreconditionError as error:
                raise TrainingDiverged(
                    f"training diverged at step {step.number} (epoch {step.epoch}): {error}"
                ) from None
            if exact and (result.model_version, result.accumulated_batches) != (
                expected,
                position,
            ):
                raise OutOfStep(
                    f"step {step.number} batch {position}: the server is at version "
                    f"{result.model_version} with {result.accumulated_batches} batches, "
                    f"expected {expected} with {position}"
                )
            losses.append(result.loss)
            computed_at = result.model_version
        if plan.versioning is Versioning.AS_COMPUTED:
            expected = computed_at
        try:
            update = self.client.apply_update(
                step.learning_rate, reduction=step.reduction, expected_version=expected
            )
        except (FailedPreconditionError, VersionConflictError) as error:
            if not exact:
                raise
            raise OutOfStep(f"step {step.number} update: {error}") from None
        if exact and update.applied_batches != len(step.batches):
            # Only possible with accumulation over several batches and a server that lost some
            # of them between the last ComputeGradients and this update: applied wrong.
            raise ResumeError(
                f"step {step.number}: the update applied {update.applied_batches} batches, "
                f"expected {len(step.batches)}; restore an earlier checkpoint"
            )
        return StepDone(step, tuple(losses), update.model_version, time.perf_counter() - started)
