"""How a store computes a batch's gradients and what else must follow its steps: the strategy
a ParameterStore holds (this process's LocalCompute, or distributed.py's data parallelism).

The store (parameter_store.py) keeps the accumulate/step core and calls its strategy, with the
lock held, to compute one batch's loss and gradients and after each step, each drop of the
gradients and each restored checkpoint; LocalCompute has nothing to tell anyone.
"""

from __future__ import annotations

from typing import Protocol

import torch

from gradserve.types import Reduction

from ..models.hyperparameters import Hyperparameters
from ..models.model import LossFunction
from .accumulation import Gradients, batch_gradients
from .live_state import LiveState
from .store_state import StoreState


class ComputeStrategy(Protocol):
    # 1: this process computes everything; per-batch losses, kept graphs and optimistic runs
    # need that.
    world_size: int

    def compute(
        self, inputs: torch.Tensor, targets: torch.Tensor, weight: float
    ) -> tuple[float, Gradients]:
        """Forward, the run's loss and checked gradients of one batch (nothing added)."""
        ...

    def stepped(
        self,
        learning_rate: float,
        reduction: Reduction,
        hyperparameters: Hyperparameters,
        max_grad_norm: float | None,
    ) -> None: ...

    def dropped(self) -> None: ...

    def check_restore(self, state: StoreState) -> None: ...

    def restored(self) -> None:
        """After restore_state, without the lock."""
        ...


class LocalCompute:
    """Everything on this process: nothing to send after a step, a drop or a restore."""

    world_size = 1

    def __init__(self, state: LiveState) -> None:
        self._state = state

    def compute(
        self, inputs: torch.Tensor, targets: torch.Tensor, weight: float
    ) -> tuple[float, Gradients]:
        return local_gradients(self._state, inputs, targets)

    def stepped(
        self,
        learning_rate: float,
        reduction: Reduction,
        hyperparameters: Hyperparameters,
        max_grad_norm: float | None,
    ) -> None:
        pass

    def dropped(self) -> None:
        pass

    def check_restore(self, state: StoreState) -> None:
        pass

    def restored(self) -> None:
        pass


def local_gradients(
    state: LiveState,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_function: LossFunction | None = None,
) -> tuple[float, Gradients]:
    """One batch on this process, with the run's loss or `loss_function`."""
    if inputs.device != state.device:
        inputs, targets = inputs.to(state.device), targets.to(state.device)
    return batch_gradients(
        state.model,
        state.named,
        state.parameters,
        inputs,
        targets,
        version=state.version,
        loss_function=loss_function,
    )
