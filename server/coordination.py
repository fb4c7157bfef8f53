"""How many workers share one model: direct, synchronous (a barrier) or asynchronous (bounded
staleness) coordination, layered over the ParameterStore without changing it.

- direct: today's behaviour; each call acts at once (the default).
- sync: ComputeGradients accumulates as usual; ApplyUpdate waits at a barrier until N
  contributions (batches, or samples) have accumulated, then exactly one update is applied with
  the MEAN over the accumulated batches, and every waiting call returns that update's result.
  The barrier is checked when an ApplyUpdate arrives, so a round can take batches whose
  workers have not called ApplyUpdate yet. Such a late worker says which round it fed with
  `expected_version` (the model_version its ComputeGradients answers reported): in sync mode
  an expected_version below the model's version is answered with the result of the round
  that started at that version (recent rounds are remembered) instead of ABORTED. Without
  expected_version, an ApplyUpdate that finds no open round and nothing accumulated gets the
  last round's result. With W workers that each send k batches per ApplyUpdate, set
  N = W * k and the workers run in lockstep.
  A round whose barrier is not reached within `sync_timeout_seconds` (counted from the first
  ApplyUpdate of the round) is either applied with what arrived (policy "apply") or aborted
  (policy "abort": the accumulated gradients are discarded and every waiting call fails with
  ABORTED). A call whose own deadline comes first leaves with DEADLINE_EXCEEDED; its gradients
  stay accumulated and still count for the round.
- async: each ApplyUpdate steps at once. ComputeGradients may say which model version the
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
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Protocol

import grpc
import torch

from gradserve.errors import (
    FailedPreconditionError,
    GradserveError,
    InvalidArgumentError,
    VersionConflictError,
)
from gradserve.server.config import ServerConfig
from gradserve.server.metrics import ServerMetrics
from gradserve.server.parameter_store import (
    GradientResult,
    ParameterStore,
    Reduction,
    UpdateResult,
    check_learning_rate,
)
from gradserve.server.request_ids import RequestIdWindow, check_request_id

MODES = ("direct", "sync", "async")
SYNC_UNITS = ("batches", "samples")
SYNC_TIMEOUT_POLICIES = ("apply", "abort")
STALE_POLICIES = ("reject", "downweight")
_REMEMBERED_ROUNDS = 256


@dataclass(frozen=True)
class CoordinationConfig:
    mode: str = "direct"
    # sync: contributions per update, counted in `sync_unit`.
    sync_contributions: int = 1
    sync_unit: str = "batches"
    sync_timeout_seconds: float = 30.0
    sync_timeout_policy: str = "apply"
    # async: the largest staleness accepted at full weight.
    max_staleness: int = 4
    stale_policy: str = "reject"

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("mode", self.mode, MODES),
            ("sync_unit", self.sync_unit, SYNC_UNITS),
            ("sync_timeout_policy", self.sync_timeout_policy, SYNC_TIMEOUT_POLICIES),
            ("stale_policy", self.stale_policy, STALE_POLICIES),
        ):
            if value not in allowed:
                raise InvalidArgumentError(f"{name}: {value!r}, expected one of {allowed}")
        if self.sync_contributions < 1:
            raise InvalidArgumentError("sync_contributions: must be >= 1")
        if not self.sync_timeout_seconds > 0:
            raise InvalidArgumentError("sync_timeout_seconds: must be > 0")
        if self.max_staleness < 0:
            raise InvalidArgumentError("max_staleness: must be >= 0")


class Coordinator(Protocol):
    def compute_gradients(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        request_id: str = "",
        return_gradients: bool = False,
        based_on_version: int | None = None,
    ) -> GradientResult: ...

    def apply_update(
        self,
        learning_rate: float,
        *,
        reduction: Reduction = Reduction.SUM,
        expected_version: int | None = None,
        request_id: str = "",
        time_remaining: float | None = None,
    ) -> UpdateResult: ...


class DirectCoordinator:
    """Every call goes straight to the store: one worker, or workers that coordinate themselves."""

    def __init__(self, store: ParameterStore) -> None:
        self.store = store

    def compute_gradients(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        request_id: str = "",
        return_gradients: bool = False,
        based_on_version: int | None = None,
    ) -> GradientResult:
        return self.store.compute_gradients(
            inputs, targets, request_id=request_id, return_gradients=return_gradients
        )

    def apply_update(
        self,
        learning_rate: float,
        *,
        reduction: Reduction = Reduction.SUM,
        expected_version: int | None = None,
        request_id: str = "",
        time_remaining: float | None = None,
    ) -> UpdateResult:
        return self.store.apply_update(
            learning_rate,
            reduction=reduction,
            expected_version=expected_version,
            request_id=request_id,
        )


@dataclass
class _Round:
    number: int
    deadline: float
    waiting: int = 0
    outcome: UpdateResult | GradserveError | None = None


class SyncCoordinator(DirectCoordinator):
    """ApplyUpdate is a barrier: one MEAN update per N contributions, shared by all waiters."""

    def __init__(
        self,
        store: ParameterStore,
        config: CoordinationConfig,
        metrics: ServerMetrics | None = None,
        request_id_window: int = 1024,
    ) -> None:
        super().__init__(store)
        self.config = config
        self._metrics = metrics
        self._changed = threading.Condition()
        self._round: _Round | None = None
        self._rounds = 0
        # Results of recent rounds by the version they started at, for late workers.
        self._completed: OrderedDict[int, UpdateResult] = OrderedDict()
        # Waiters' ids: the store only remembers the id of the call that applied the round.
        self._request_ids = RequestIdWindow(request_id_window)

    def contributions(self) -> int:
        store = self.store
        if self.config.sync_unit == "samples":
            return store.accumulated_samples
        return store.accumulated_batches

    def apply_update(
        self,
        learning_rate: float,
        *,
        reduction: Reduction = Reduction.SUM,
        expected_version: int | None = None,
        request_id: str = "",
        time_remaining: float | None = None,
    ) -> UpdateResult:
        check_request_id(request_id)
        check_learning_rate(learning_rate)
        call_deadline = None if time_remaining is None else time.monotonic() + time_remaining
        with self._changed:
            replay = self._request_ids.get("sync_apply_update", request_id)
            if replay is not None:
                return replay  # type: ignore[no-any-return]
            late = self._late_result(expected_version)
            if late is not None:
                self._request_ids.put("sync_apply_update", request_id, late)
                return late
            current = self._round
            if current is None:
                self._rounds += 1
                current = _Round(self._rounds, time.monotonic() + self.config.sync_timeout_seconds)
                self._round = current
            current.waiting += 1
            try:
                while current.outcome is None:
                    now = time.monotonic()
                    if self.contributions() >= self.config.sync_contributions:
                        self._finish(current, learning_rate, request_id, timed_out=False)
                        break
                    if now >= current.deadline:
                        self._finish(current, learning_rate, request_id, timed_out=True)
                        break
                    if call_deadline is not None and now >= call_deadline:
                        raise GradserveError(
                            f"the call's deadline passed while the sync round waited for "
                            f"{self.config.sync_contributions} {self.config.sync_unit} "
                            f"({self.contributions()} arrived); its gradients stay accumulated",
                            code=grpc.StatusCode.DEADLINE_EXCEEDED,
                        )
                    wake = (
                        current.deadline
                        if call_deadline is None
                        else min(current.deadline, call_deadline)
                    )
                    self._changed.wait(wake - now)
            finally:
                current.waiting -= 1
                if current.waiting == 0 and current.outcome is None:
                    # Every waiter left on its own deadline: the next ApplyUpdate starts the
                    # round's clock afresh (the accumulated gradients still count).
                    self._round = None
            outcome = current.outcome
            if isinstance(outcome, GradserveError):
                raise outcome
            assert outcome is not None
            self._request_ids.put("sync_apply_update", request_id, outcome)
            return outcome

    def _late_result(self, expected_version: int | None) -> UpdateResult | None:
        """The result of the round a late worker's batches went into, when it is over."""
        version = self.store.version
        if expected_version is None:
            if self._round is None and self.contributions() == 0 and self._completed:
                return next(reversed(self._completed.values()))
            return None
        if expected_version == version:
            return None
        done = self._completed.get(expected_version)
        if expected_version > version or done is None:
            raise VersionConflictError(
                f"expected_version: {expected_version}, but the model is at version {version} "
                "and no recent sync round started at that version; nothing was applied",
                field="expected_version",
            )
        return done

    def _finish(
        self, current: _Round, learning_rate: float, request_id: str, *, timed_out: bool
    ) -> None:
        """Apply (or abort) the round under the condition's lock; wake every waiter."""
        arrived = self.contributions()
        outcome: UpdateResult | GradserveError
        if timed_out and self.config.sync_timeout_policy == "abort":
            discarded = self.store.discard_gradients()
            outcome = VersionConflictError(
                f"sync round {current.number} aborted after {self.config.sync_timeout_seconds:g}s: "
                f"{arrived} of {self.config.sync_contributions} {self.config.sync_unit} arrived; "
                f"their gradients ({discarded.discarded_batches} batches) were discarded and the "
                f"model stays at version {discarded.model_version}"
            )
            label = "aborted"
        else:
            try:
                outcome = self.store.apply_update(
                    learning_rate, reduction=Reduction.MEAN, request_id=request_id
                )
                label = "timed_out_applied" if timed_out else "applied"
                self._completed[outcome.model_version - 1] = outcome
                while len(self._completed) > _REMEMBERED_ROUNDS:
                    self._completed.popitem(last=False)
            except FailedPreconditionError as error:
                outcome = error
                label = "empty"
        current.outcome = outcome
        self._round = None
        if self._metrics is not None:
            self._metrics.sync_rounds.labels(label).inc()
        self._changed.notify_all()


class AsyncCoordinator(DirectCoordinator):
    """Each update steps at once; contributions are checked against the staleness bound."""

    def __init__(
        self,
        store: ParameterStore,
        config: CoordinationConfig,
        metrics: ServerMetrics | None = None,
    ) -> None:
        super().__init__(store)
        self.config = config
        self._metrics = metrics
        # The version read and the accumulation must not straddle an update.
        self._lock = threading.Lock()

    def compute_gradients(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        *,
        request_id: str = "",
        return_gradients: bool = False,
        based_on_version: int | None = None,
    ) -> GradientResult:
        with self._lock:
            version = self.store.version
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
                    if self._metrics is not None:
                        self._metrics.stale_contributions.labels("rejected").inc()
                    raise VersionConflictError(
                        f"based_on_version: {based_on_version} is {staleness} versions behind "
                        f"the model's {version}, more than max_staleness "
                        f"{self.config.max_staleness}; nothing was accumulated",
                        field="based_on_version",
                    )
                weight = 1.0 / (1.0 + staleness)
            result = self.store.compute_gradients(
                inputs,
                targets,
                request_id=request_id,
                return_gradients=return_gradients,
                weight=weight,
            )
        if self._metrics is not None and not result.replayed:
            self._metrics.staleness.observe(staleness)
            if weight != 1.0:
                self._metrics.stale_contributions.labels("downweighted").inc()
        return result

    def apply_update(
        self,
        learning_rate: float,
        *,
        reduction: Reduction = Reduction.SUM,
        expected_version: int | None = None,
        request_id: str = "",
        time_remaining: float | None = None,
    ) -> UpdateResult:
        with self._lock:
            try:
                return self.store.apply_update(
                    learning_rate,
                    reduction=reduction,
                    expected_version=expected_version,
                    request_id=request_id,
                )
            except FailedPreconditionError:
                # Another worker's update already applied this worker's gradients.
                info = self.store.info()
                return UpdateResult(
                    model_version=info.model_version,
                    applied_batches=0,
                    applied_samples=0,
                    gradient_norm=0.0,
                )


def coordination_config(config: ServerConfig) -> CoordinationConfig:
    return CoordinationConfig(
        mode=config.mode,
        sync_contributions=config.sync_contributions,
        sync_unit=config.sync_unit,
        sync_timeout_seconds=config.sync_timeout_seconds,
        sync_timeout_policy=config.sync_timeout_policy,
        max_staleness=config.max_staleness,
        stale_policy=config.stale_policy,
    )


def build_coordinator(
    store: ParameterStore,
    config: CoordinationConfig,
    metrics: ServerMetrics | None = None,
    request_id_window: int = 1024,
) -> Coordinator:
    if config.mode == "sync":
        return SyncCoordinator(store, config, metrics, request_id_window)
    if config.mode == "async":
        return AsyncCoordinator(store, config, metrics)
    return DirectCoordinator(store)
