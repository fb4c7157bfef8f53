"""Sync mode: ApplyUpdate is a barrier; one MEAN update per N contributions, shared by all.

Sync: ComputeGradients accumulates as usual; ApplyUpdate waits at a barrier until N
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
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import grpc

from gradserve.errors import FailedPreconditionError, GradserveError, VersionConflictError
from gradserve.types import Reduction, UpdateResult

from ..config import CoordinationConfig, LimitsConfig
from ..metrics import RunMetrics
from ..models.hyperparameters import Hyperparameters
from ..store.parameter_store import ParameterStore
from ..store.request_ids import RequestIdWindow, check_request_id
from ..store.updates import check_update
from .update_policy import UpdateCall, Weigh, refuse_streamed

_REMEMBERED_ROUNDS = 256


@dataclass
class _Round:
    """One barrier. Its single update takes the learning rate, hyperparameters and
    max_grad_norm of the ApplyUpdate that closes it (finds the barrier reached, or times out)."""

    number: int
    deadline: float
    waiting: int = 0
    outcome: UpdateResult | GradserveError | None = None


@dataclass(frozen=True)
class _Settings:
    """What one ApplyUpdate asks of the round's update, when it is the call that closes it."""

    learning_rate: float
    hyperparameters: Hyperparameters
    max_grad_norm: float | None


class SyncUpdates:
    """ApplyUpdate is a barrier: one MEAN update per N contributions, shared by all waiters."""

    def __init__(
        self,
        store: ParameterStore,
        config: CoordinationConfig,
        metrics: RunMetrics,
        limits: LimitsConfig,
    ) -> None:
        self.store = store
        self.config = config
        self.metrics = metrics
        self._changed = threading.Condition()
        self._round: _Round | None = None
        self._rounds = 0
        # Results of recent rounds by the version they started at, for late workers.
        self._completed: OrderedDict[int, UpdateResult] = OrderedDict()
        # Waiters' ids: the store only remembers the id of the call that applied the round.
        self._request_ids = RequestIdWindow(
            limits.request_id_window, limits.request_id_window_bytes
        )

    def weigher(self, based_on_version: int | None, seen: list[float]) -> Weigh | None:
        return None

    def check_streamed(self) -> None:
        refuse_streamed()

    def contributions(self) -> int:
        _, batches, samples = self.store.snapshot()
        return samples if self.config.sync_unit == "samples" else batches

    def apply(self, call: UpdateCall) -> UpdateResult:
        """The round's update takes the closing call's settings (see _Round)."""
        check_request_id(call.request_id)
        check_update(
            self.store.optimizer, call.learning_rate, call.hyperparameters, call.max_grad_norm
        )
        remaining = call.time_remaining
        call_deadline = None if remaining is None else time.monotonic() + remaining
        settings = _Settings(
            call.learning_rate, dict(sorted(call.hyperparameters.items())), call.max_grad_norm
        )
        extra = (settings,) if call.hyperparameters or call.max_grad_norm is not None else ()
        with self._changed:
            result = self._request_ids.remembered(
                "sync_apply_update",
                call.request_id,
                lambda: self._wait_for_round(
                    settings, call.expected_version, call_deadline, call.request_id
                ),
                call.learning_rate,
                call.reduction,
                call.expected_version,
                *extra,
            )
        if result.replayed:
            self.metrics.record_update(result)
        return result

    def _wait_for_round(
        self,
        settings: _Settings,
        expected_version: int | None,
        call_deadline: float | None,
        request_id: str,
    ) -> UpdateResult:
        """The round's outcome for this call; with the condition's lock held."""
        late = self._late_result(expected_version)
        if late is not None:
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
                arrived = self.contributions()
                if arrived >= self.config.sync_contributions:
                    self._finish(current, settings, request_id, timed_out=False)
                    break
                if now >= current.deadline:
                    self._finish(current, settings, request_id, timed_out=True)
                    break
                if call_deadline is not None and now >= call_deadline:
                    raise GradserveError(
                        f"the call's deadline passed while the sync round waited for "
                        f"{self.config.sync_contributions} {self.config.sync_unit} "
                        f"({arrived} arrived); its gradients stay accumulated",
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
        return outcome

    def _late_result(self, expected_version: int | None) -> UpdateResult | None:
        """The result of the round a late worker's batches went into, when it is over."""
        version, batches, samples = self.store.snapshot()
        if expected_version is None:
            arrived = samples if self.config.sync_unit == "samples" else batches
            if self._round is None and arrived == 0 and self._completed:
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
        self, current: _Round, settings: _Settings, request_id: str, *, timed_out: bool
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
                f"model stays at version {discarded.model_version}",
                reason="SYNC_ROUND_ABORTED",
            )
            label = "aborted"
        else:
            try:
                # The applying call's id goes to the store too: a checkpoint keeps it.
                outcome = self.store.apply_update(
                    settings.learning_rate,
                    reduction=Reduction.MEAN,
                    request_id=request_id,
                    hyperparameters=settings.hyperparameters,
                    max_grad_norm=settings.max_grad_norm,
                )
                label = "timed_out_applied" if timed_out else "applied"
                self.metrics.record_update(outcome)
                self._completed[outcome.model_version - 1] = outcome
                while len(self._completed) > _REMEMBERED_ROUNDS:
                    self._completed.popitem(last=False)
            except FailedPreconditionError as error:
                outcome = error
                label = "empty"
        current.outcome = outcome
        self._round = None
        self.metrics.sync_rounds.labels(label).inc()
        self._changed.notify_all()
