"""A dataset pass run by the store: many one-batch steps with one set of update settings,
checked once for the whole pass instead of step by step.

The servicer resolves a DatasetPass (server/datasets/passes.py) into PassSteps: one TrainStep
per batch, views of the dataset's tensors. The store runs them exactly as Train runs the same
list of steps (optimistically, then if anything is not finite through the checked path, where
the steps before the failing one stay applied and the error names `dataset_pass.steps[i]`),
so the parameters are bitwise those of the equivalent steps. What it skips is the per-step
work the pass makes redundant: check_steps' look at every batch (the batches are samples of a
dataset checked whole against this model at upload, so one batch of each size is looked at),
and, unless asked or clipping, the gradient norm of every update.

Owned by ParameterStore (parameter_store.py), which delegates train_pass to it; it reads the
store's LiveState (live_state.py) and runs the steps through the store's `_run_steps`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gradserve.types import TrainResult, TrainStep

from ..tracing import traced
from .buffers import check_training_batch
from .error_scope import scoped
from .live_state import LiveState
from .request_ids import check_request_id
from .updates import check_update

_NOTE = (
    "{index} of {count} steps of this pass were applied before it, as with the same steps "
    "sent as TrainRequest.steps"
)


@dataclass(frozen=True)
class PassSteps:
    """A pass's steps as the store runs them: one batch each, every update with the same
    settings and no expected_version of its own. `fingerprint`: what stands for the pass in
    the request-id window (its descriptor, not the gathered batches)."""

    steps: list[TrainStep]
    expected_version: int | None
    gradient_norms: bool
    fingerprint: tuple[object, ...]


class PassRuns:
    """Dataset passes on one store's LiveState. `run_steps` is the store's: the steps run
    as Train's do (optimistically, else checked), with the lock held."""

    def __init__(self, state: LiveState, run_steps: Callable[..., TrainResult]) -> None:
        self._state = state
        self._run_steps = run_steps

    @traced("gradserve.train_pass")
    def train_pass(self, expanded: PassSteps, *, request_id: str = "") -> TrainResult:
        """Run the pass's steps in order, as train() runs the same steps; the settings and a
        batch of each size are checked before anything runs, the version before the first
        step (under the lock, so that step i applies at expected_version + i)."""
        check_request_id(request_id)
        steps = expanded.steps
        sizes = self._pass_sizes(steps)
        # Clipping computes its norm anyway; asked or not, it is answered.
        norms = expanded.gradient_norms or steps[0].max_grad_norm is not None

        def run() -> TrainResult:
            with scoped("dataset_pass"):
                self._state.check_version(expanded.expected_version)
            return self._run_steps(steps, sizes, "dataset_pass.steps", _NOTE, norms=norms)

        with self._state.lock:
            return self._state.request_ids.remembered(
                "train", request_id, run, *expanded.fingerprint
            )

    def _pass_sizes(self, steps: list[TrainStep]) -> list[list[int]]:
        first, last = steps[0], steps[-1]
        with scoped("dataset_pass"):
            check_update(
                self._state.optimizer,
                first.learning_rate,
                first.hyperparameters,
                first.max_grad_norm,
            )
            size = self._state.model.check_batch(*first.batches[0], values=False)
            last_size = self._state.model.check_batch(*last.batches[0], values=False)
        with scoped("dataset_pass.batch_size"):
            check_training_batch(last_size, self._state.smallest_batch)
        sizes = [[size]] * (len(steps) - 1)
        sizes.append([last_size])
        return sizes
