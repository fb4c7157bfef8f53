"""What a store asks of a cross-run batcher: one batch's loss and gradients, computed together
with other runs' batches on the same base (server/coordination/cross_run_batches.py).

The store keeps everything that is the run's own: its lock (held while the batch is computed,
so a run has at most one request in a batch), its request ids, the checks of the loss and the
gradients, and the adding into .grad. The batcher only computes; it answers None when the
request is better run alone (batching off, a lone run, an adapter with dropout), and the store
then runs it as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from ..models.model import LossFunction
from .accumulation import Gradients, check_loss
from .live_state import LiveState


@dataclass(frozen=True)
class BatchNote:
    """What a request learns of the batch it ran in (trailing metadata, docs/batching.md):
    nothing of the other requests but their count."""

    # Requests ahead of it in the fair order when it was queued.
    queue_position: int
    # Batches that started after it was queued and before its own.
    batches_waited: int
    wait_seconds: float
    batch_requests: int


def batch_note_metadata(note: BatchNote) -> tuple[tuple[str, str], ...]:
    """The note as the answer's trailing metadata (docs/batching.md)."""
    return (
        ("gradserve-batch-queue-position", str(note.queue_position)),
        ("gradserve-batch-batches-waited", str(note.batches_waited)),
        ("gradserve-batch-wait-seconds", f"{note.wait_seconds:.6f}"),
        ("gradserve-batch-requests", str(note.batch_requests)),
    )


# Called once with the note when the request ran in a cross-run batch.
OnBatched = Callable[[BatchNote], None]


class SharedCompute(Protocol):
    def compute(
        self,
        module: nn.Module,
        parameters: Sequence[nn.Parameter],
        inputs: torch.Tensor,
        targets: torch.Tensor,
        loss_function: LossFunction,
    ) -> tuple[float, Gradients, BatchNote] | None:
        """The batch's loss, its gradients aligned with `parameters` and its note; None: run
        it alone. Called with the run's lock held."""
        ...

    def leave(self) -> None:
        """The run is unloaded or deleted: batches stop waiting for it."""
        ...


def accumulate_shared(
    state: LiveState,
    shared: SharedCompute | None,
    batch: tuple[torch.Tensor, torch.Tensor],
    loss_function: LossFunction | None,
    add: Callable[[Gradients], None],
    *,
    on_batched: OnBatched | None,
) -> tuple[float, Gradients] | None:
    """One ComputeGradients batch through the batcher, checked and added as the store's own
    path does (accumulation.py: the loss checked, then `add`, which checks the gradients),
    `on_batched` told how it ran; None when the batcher leaves it to the store. Call with
    the lock held."""
    if shared is None:
        return None
    inputs, targets = batch
    if inputs.device != state.device:
        inputs, targets = inputs.to(state.device), targets.to(state.device)
    function = state.model.loss.function if loss_function is None else loss_function
    computed = shared.compute(state.model.module, state.parameters, inputs, targets, function)
    if computed is None:
        return None
    loss, gradients, note = computed
    check_loss(loss, state.version)
    with state.buffer_keeper.kept():
        add(gradients)
    if on_batched is not None:
        on_batched(note)
    return loss, gradients
