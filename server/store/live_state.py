"""LiveState: what a ParameterStore shares with the collaborators it owns (the model's tensors,
the lock, the version and counts, the request-id window), one plain object passed to each.

ParameterStore (parameter_store.py) builds it and alone decides what a call does with it; the
collaborators (state_transfer.py, output_passes.py, model_access.py, optimistic_runs.py,
pass_runs.py, and the compute strategy of compute.py or distributed.py) get it in their
constructors and read and write it with the lock held, as the store's own methods do.
"""

from __future__ import annotations

import threading

import torch

from gradserve.errors import VersionConflictError

from ..models.model import Model
from ..models.optimizers import Optimizer
from .buffers import BufferKeeper, model_buffers, smallest_training_batch
from .request_ids import RequestIdWindow


class LiveState:
    def __init__(self, model: Model, optimizer: Optimizer, request_ids: RequestIdWindow) -> None:
        self.model = model
        self.optimizer = optimizer
        self.named = dict(model.module.named_parameters())
        self.parameters = list(self.named.values())
        # Buffers (batch norm's statistics): kept through a refused batch, checkpointed.
        self.buffers = model_buffers(model.module)
        self.buffer_keeper = BufferKeeper(self.buffers)
        # What GetParameters and SetParameters may name: the parameters, then the buffers.
        self.tensors: dict[str, torch.Tensor] = {**self.named, **self.buffers}
        self.smallest_batch = smallest_training_batch(model)
        # The model's device (--device); requests move there once, results come back to CPU.
        self.device = self.parameters[0].device if self.parameters else torch.device("cpu")
        self.lock = threading.Lock()
        # Replaced whole when a checkpoint is restored (state_transfer.py).
        self.request_ids = request_ids
        self.version = 0
        self.accumulated_batches = 0
        self.accumulated_samples = 0

    def check_version(self, expected_version: int | None) -> None:
        if expected_version is not None and expected_version != self.version:
            raise VersionConflictError(
                f"expected_version: {expected_version}, but the model is at version "
                f"{self.version}; nothing was applied",
                field="expected_version",
                metadata={
                    "expected_version": str(expected_version),
                    "model_version": str(self.version),
                },
            )
