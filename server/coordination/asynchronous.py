"""Async mode: each update steps at once; stale contributions are rejected or down-weighted.

Async: each ApplyUpdate steps at once. ComputeGradients may say which model version the
worker based its batch on (`based_on_version`, the version it last observed: its last
ApplyUpdate's or GetParameters' answer); staleness = the server's version when the gradients
are computed minus that version. The server always computes on its current parameters, so
staleness measures how far the worker's own view (its schedule, its learning-rate decisions,
anything it derived from parameters it fetched) lags the model. A contribution staler than
`max_staleness` is rejected with ABORTED (policy "reject") or accumulated with weight
1 / (1 + staleness) (policy "downweight"). An ApplyUpdate that finds nothing accumulated,
because another worker's update already applied its gradients, returns the current version
with applied_batches 0 instead of FAILED_PRECONDITION.
"""

from __future__ import annotations

import threading

from gradserve.errors import FailedPreconditionError, InvalidArgumentError, VersionConflictError
from gradserve.types import UpdateResult

from ..config import CoordinationConfig
from ..metrics import RunMetrics
from ..store.parameter_store import ParameterStore
from .update_policy import UpdateCall, Weigh, refuse_streamed


class AsyncUpdates:
    """Each update steps at once; contributions are checked against the staleness bound."""

    def __init__(
        self, store: ParameterStore, config: CoordinationConfig, metrics: RunMetrics
    ) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        # An update and the snapshot taken when it found nothing to apply go together.
        self._lock = threading.Lock()

    def check_streamed(self) -> None:
        refuse_streamed()

    def weigher(self, based_on_version: int | None, seen: list[float]) -> Weigh | None:
        """The store's `weigh`: checks staleness and appends (staleness, weight) to `seen`."""

        def weigh(version: int) -> float:
            # Called by the store under its lock, after the request-id lookup: a retried,
            # accepted batch is answered from the window, whatever its staleness now.
            based_on = version if based_on_version is None else based_on_version
            staleness = version - based_on
            if staleness < 0:
                raise InvalidArgumentError(
                    f"based_on_version: {based_on_version} is ahead of the model's version "
                    f"{version}",
                    field="based_on_version",
                )
            weight = 1.0
            if staleness > self.config.max_staleness:
                if self.config.stale_policy == "reject":
                    self.metrics.stale_contributions.labels("rejected").inc()
                    raise VersionConflictError(
                        f"based_on_version: {based_on_version} is {staleness} versions behind "
                        f"the model's {version}, more than max_staleness "
                        f"{self.config.max_staleness}; nothing was accumulated",
                        field="based_on_version",
                        reason="STALE_CONTRIBUTION",
                    )
                weight = 1.0 / (1.0 + staleness)
            seen.extend((staleness, weight))
            return weight

        return weigh

    def apply(self, call: UpdateCall) -> UpdateResult:
        """Each update takes its own request's overrides and clipping."""
        with self._lock:
            try:
                result = call.applied_by(self.store)
            except FailedPreconditionError:
                # Another worker's update already applied this worker's gradients: no step
                # was taken here, so none is counted.
                return UpdateResult(self.store.snapshot()[0], 0, 0, 0.0)
        self.metrics.record_update(result)
        return result
