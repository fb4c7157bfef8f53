"""How a run's updates are coordinated among its workers: the policy its ServedRun holds.

Three policies (CoordinationConfig.mode), each a plain object over the run's store and metrics:
- direct (DirectUpdates, here): each ApplyUpdate steps at once; Train runs its steps in the store.
- sync (sync.py): ApplyUpdate is a barrier; one MEAN update per N contributions.
- async (asynchronous.py): each update steps at once; stale contributions are bounded.
Sync and async decide per ComputeGradients/ApplyUpdate call, so they refuse Train (a stream of
steps would bypass them) with FAILED_PRECONDITION naming the field "mode".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from gradserve.errors import FailedPreconditionError
from gradserve.types import Reduction, UpdateResult

from ..metrics import RunMetrics
from ..models.hyperparameters import NO_OVERRIDES, Hyperparameters
from ..store.parameter_store import ParameterStore

# The store's `weigh(version)`: the factor for one contribution (async mode's staleness).
Weigh = Callable[[int], float]


@dataclass(frozen=True)
class UpdateCall:
    """One ApplyUpdate as the policy sees it. `hyperparameters`, `max_grad_norm`: this
    update's optimizer overrides and clipping (server/store/updates.py)."""

    learning_rate: float
    reduction: Reduction = Reduction.SUM
    expected_version: int | None = None
    request_id: str = ""
    # Seconds left before the caller's deadline (sync rounds stop waiting then).
    time_remaining: float | None = None
    hyperparameters: Hyperparameters = field(default_factory=lambda: NO_OVERRIDES)
    max_grad_norm: float | None = None

    def applied_by(self, store: ParameterStore) -> UpdateResult:
        """This update, applied by the store as asked."""
        return store.apply_update(
            self.learning_rate,
            reduction=self.reduction,
            expected_version=self.expected_version,
            request_id=self.request_id,
            hyperparameters=self.hyperparameters,
            max_grad_norm=self.max_grad_norm,
        )


class UpdatePolicy(Protocol):
    """What differs between the modes; everything else a ServedRun does the same way."""

    def weigher(self, based_on_version: int | None, seen: list[float]) -> Weigh | None:
        """The store's `weigh` for one contribution (None: weight 1, unchecked); appends
        (staleness, weight) to `seen` when it weighs."""
        ...

    def apply(self, call: UpdateCall) -> UpdateResult:
        """The update's result, recorded in the run's metrics when a step was taken."""
        ...

    def check_streamed(self) -> None:
        """Raises when this mode refuses Train's streamed steps."""
        ...


class DirectUpdates:
    """Every call goes straight to the store: one worker, or workers that coordinate themselves."""

    def __init__(self, store: ParameterStore, metrics: RunMetrics) -> None:
        self.store = store
        self.metrics = metrics

    def weigher(self, based_on_version: int | None, seen: list[float]) -> Weigh | None:
        return None

    def apply(self, call: UpdateCall) -> UpdateResult:
        result = call.applied_by(self.store)
        self.metrics.record_update(result)
        return result

    def check_streamed(self) -> None:
        pass


def refuse_streamed() -> None:
    """Train in a mode that decides per ComputeGradients/ApplyUpdate call."""
    raise FailedPreconditionError(
        "Train runs in --mode direct only; in sync or async mode call "
        "ComputeGradients and ApplyUpdate (client/train.py --transport unary)",
        field="mode",
        reason="UNSUPPORTED_IN_MODE",
    )
