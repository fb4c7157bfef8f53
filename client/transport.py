"""What a transport is: it runs a plan's steps on the server and reports each one done.

Two implement it, with the same arithmetic on the server and so bitwise the same parameters:
`UnaryTransport` (client/transport_unary.py: ComputeGradients per batch, ApplyUpdate per step)
and `StreamTransport` (client/transport_stream.py: steps packed into pipelined Train requests).
The training loop (client/loop.py) drives either one and owns resuming and recording.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

from .plan import PlannedStep, StepPlan


class TrainingDiverged(RuntimeError):
    """The loss or the gradients stopped being finite."""


class ResumeError(RuntimeError):
    """The server's state cannot be reconciled with this run (see the message)."""


class OutOfStep(Exception):
    """The server is not where an EXACT plan expects it (it restarted, a call was lost):
    the loop re-syncs on the server's version and continues from there."""


@dataclass(frozen=True)
class StepDone:
    step: PlannedStep
    losses: tuple[float, ...]
    # The model version after the step's update.
    model_version: int
    # Wall time of the step (for a packed request, its share of the request's time).
    seconds: float


class Transport(Protocol):
    def run(
        self, plan: StepPlan, first_step: int, start_version: int, *, pause_at_epoch_end: bool
    ) -> Iterator[StepDone]:
        """Run the plan's steps from `first_step` (step s applies at the version the plan
        says, given start_version), yielding each step once its update is applied.

        With `pause_at_epoch_end`, nothing of the next epoch is sent before the caller has
        taken the step that closes an epoch and asked for the next one (so a validation pass
        in between sees the parameters at the end of the epoch). Raises OutOfStep only for
        an EXACT plan; TrainingDiverged when the server refuses a non-finite loss."""
        ...
