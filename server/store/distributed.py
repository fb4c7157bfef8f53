"""Server-side data parallelism over torch.distributed: one model replica per rank, one gRPC
server on rank 0 (`torchrun --nproc-per-node W server/serve.py ...`; docs/scaling.md).

Every rank's ParameterStore holds DataParallelCompute as its compute strategy (compute.py):
rank 0 serves it behind gRPC and the strategy sends each batch, step and drop to the other
ranks, which loop on those commands (follow) and replay them through their own store's calls.
Only tensors cross between ranks (broadcast, all_reduce; no pickled objects):
- compute: rank 0 broadcasts the batch; rank r takes rows tensor_split(batch, W)[r], computes
  its shard's mean loss and gradients, scaled by n_r / n; an all_reduce(SUM) then gives every
  rank the full batch's mean loss and gradient (exactly so for losses that are a mean over
  samples), which every rank adds to its own .grad.
- step: after rank 0 steps, every rank takes the same optimizer step with the same gradient,
  so parameters (and optimizer state) stay identical.
- sync: after parameters are set or gradients dropped, rank 0 broadcasts every parameter.
- ping: rank 0 sends one when idle, so a dead rank is noticed without traffic.
A collective that fails or outlasts GRADSERVE_DISTRIBUTED_TIMEOUT_SECONDS (the process group's
timeout) marks the store failed: health turns NOT_SERVING and every call that needs the ranks
fails with UNAVAILABLE (distributed_launch.py joins the group, runs the followers and the
heartbeat). Per-shard batch statistics (batchnorm) and dropout masks differ from one
process's, as with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
import torch.distributed as dist

from gradserve.errors import FailedPreconditionError, GradserveError, UnavailableError
from gradserve.types import Reduction

from ..models.hyperparameters import (
    SETTINGS,
    Hyperparameters,
    settings_from_vector,
    settings_vector,
)
from ..models.model import Model
from ..models.optimizers import Optimizer
from .accumulation import Gradients, check_gradients, check_loss
from .live_state import LiveState
from .parameter_store import ParameterStore
from .request_ids import DEFAULT_WINDOW_BYTES
from .store_state import StoreState

logger = logging.getLogger(__name__)
T = TypeVar("T")

ENV_TIMEOUT = "GRADSERVE_DISTRIBUTED_TIMEOUT_SECONDS"

OP_STOP, OP_PING, OP_COMPUTE, OP_STEP, OP_SYNC, OP_RESTORE = range(6)
HEADER = 8
# Batch dtypes by code (the header carries the code).
DTYPES = (
    torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32,
    torch.uint8, torch.bool, torch.int16, torch.int8,
)  # fmt: skip
REDUCTIONS = (Reduction.SUM, Reduction.MEAN)


class DataParallelCompute:
    """The compute strategy (compute.py) of a ParameterStore whose gradients are computed by
    all ranks; see the module docstring. Built by the store with its LiveState."""

    def __init__(self, state: LiveState) -> None:
        self._state = state
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.failed: str | None = None
        self.on_failure: Callable[[], None] = lambda: None
        self._stopped = threading.Event()

    # -- what the store calls with its lock held (rank 0 sends; ranks > 0 only compute) -----

    def compute(
        self, inputs: torch.Tensor, targets: torch.Tensor, weight: float
    ) -> tuple[float, Gradients]:
        if self.rank != 0:  # follow() received the batch already
            return self._compute_shards(inputs, targets)

        def send() -> None:
            header = [OP_COMPUTE, DTYPES.index(inputs.dtype), DTYPES.index(targets.dtype)]
            header += [inputs.dim(), targets.dim()]
            self._broadcast_header(header)
            shapes = torch.tensor([*inputs.shape, *targets.shape], dtype=torch.int64)
            dist.broadcast(self._to_device(shapes), 0)
            dist.broadcast(self._to_device(torch.tensor([weight], dtype=torch.float64)), 0)
            dist.broadcast(self._to_device(inputs.contiguous()), 0)
            dist.broadcast(self._to_device(targets.contiguous()), 0)

        self._collective(send)
        return self._collective(lambda: self._compute_shards(inputs, targets))

    def stepped(
        self,
        learning_rate: float,
        reduction: Reduction,
        hyperparameters: Hyperparameters,
        max_grad_norm: float | None,
    ) -> None:
        if self.rank != 0:
            return
        settings = [learning_rate, *settings_vector(hyperparameters, max_grad_norm)]

        def send() -> None:
            self._broadcast_header([OP_STEP, REDUCTIONS.index(reduction)])
            dist.broadcast(self._to_device(torch.tensor(settings, dtype=torch.float64)), 0)

        self._collective(send)

    def dropped(self) -> None:
        if self.rank == 0:

            def send() -> None:
                self._broadcast_header([OP_SYNC])
                self._broadcast_parameters()

            self._collective(send)

    def check_restore(self, state: StoreState) -> None:
        """Optimizer state (momentum, Adam's moments) has no tensor-only form here: refused."""
        if state.optimizer.get("state"):
            raise FailedPreconditionError(
                "checkpoint: restoring optimizer state (momentum, Adam) into a distributed "
                "server is not supported; use a single-process server or plain SGD",
                field="checkpoint",
            )

    def restored(self) -> None:
        """A checkpoint restored on rank 0 reaches every rank: parameters, gradients, counts."""

        def send() -> None:
            self._broadcast_header([OP_RESTORE])
            self._broadcast_state()

        with self._state.lock:
            self._collective(send)

    def _broadcast_state(self) -> None:
        """Parameters, which have .grad, the gradients, and the counts, from rank 0."""
        self._broadcast_parameters()
        has = [p.grad is not None for p in self._state.parameters]
        mask = self._to_device(torch.tensor(has, dtype=torch.int64))
        dist.broadcast(mask, 0)
        counts = torch.tensor([self._state.accumulated_batches, self._state.accumulated_samples])
        counts = self._to_device(counts)
        dist.broadcast(counts, 0)
        for parameter, present in zip(self._state.parameters, mask.tolist(), strict=True):
            if present:
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                dist.broadcast(parameter.grad, 0)
            else:
                parameter.grad = None
        self._state.accumulated_batches, self._state.accumulated_samples = (
            int(c) for c in counts.tolist()
        )

    # -- every rank ------------------------------------------------------------------------

    def _compute_shards(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[float, Gradients]:
        """This rank's shard, all-reduced into the full batch's loss and gradients, checked
        as the store checks its own (accumulation.py); every rank then adds them (_add)."""
        total = inputs.shape[0]
        rows = torch.tensor_split(torch.arange(total), self.world_size)[self.rank]
        parameters = self._state.parameters
        share = len(rows) / total if total else 0.0
        grads: Gradients
        if len(rows):
            self._state.model.module.train()
            shard_loss = self._state.model.loss.function(
                self._state.model.module(inputs[rows].to(self._state.device)),
                targets[rows].to(self._state.device),
            )
            grads = torch.autograd.grad(shard_loss * share, parameters, allow_unused=True)
            loss_part = shard_loss.detach().double() * share
        else:
            grads = tuple(None for _ in parameters)
            loss_part = torch.zeros((), dtype=torch.float64, device=self._state.device)
        flat = [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for p, g in zip(parameters, grads, strict=True)
        ]
        # One all_reduce for all gradients (same dtype) and one for the loss.
        buffer = torch.cat(flat) if flat else torch.zeros(0, device=self._state.device)
        dist.all_reduce(buffer)
        loss = loss_part.reshape(1).clone()
        dist.all_reduce(loss)
        gradients: list[torch.Tensor | None] = []
        offset = 0
        for parameter in parameters:
            count = parameter.numel()
            gradients.append(buffer[offset : offset + count].view_as(parameter))
            offset += count
        loss_value = float(loss)
        check_loss(loss_value, self._state.version)
        check_gradients(self._state.named, tuple(gradients), self._state.version)
        return loss_value, tuple(gradients)

    def _broadcast_parameters(self) -> None:
        with torch.no_grad():
            for parameter in self._state.parameters:
                dist.broadcast(parameter.data, 0)

    def _broadcast_header(self, values: Sequence[int]) -> None:
        header = torch.zeros(HEADER, dtype=torch.int64)
        header[: len(values)] = torch.tensor(values, dtype=torch.int64)
        dist.broadcast(self._to_device(header), 0)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if tensor.device == self._state.device else tensor.to(self._state.device)

    def _collective(self, work: Callable[[], T]) -> T:
        """Run collectives on rank 0; any failure marks the store failed (UNAVAILABLE)."""
        if self.failed is not None:
            raise UnavailableError(f"distributed server failed: {self.failed}")
        try:
            return work()
        except GradserveError:
            raise
        except (RuntimeError, dist.DistBackendError) as error:
            self.failed = f"a rank stopped answering ({type(error).__name__}: {error})"[:300]
            logger.error("%s", self.failed)
            self.on_failure()
            raise UnavailableError(f"distributed server failed: {self.failed}") from None

    # -- rank 0: lifecycle -----------------------------------------------------------------

    def heartbeat(self, interval: float) -> None:
        """Ping the ranks whenever `interval` seconds pass; returns when stopped or failed."""
        while not self._stopped.wait(interval):
            with self._state.lock:
                if self.failed is not None or self._stopped.is_set():
                    return
                try:
                    self._collective(lambda: self._broadcast_header([OP_PING]))
                except UnavailableError:
                    return

    def stop_ranks(self) -> None:
        self._stopped.set()
        with self._state.lock:
            if self.failed is None:
                with contextlib.suppress(UnavailableError):
                    self._collective(lambda: self._broadcast_header([OP_STOP]))

    # -- ranks > 0 -------------------------------------------------------------------------

    def follow(self, store: ParameterStore) -> None:
        """A rank > 0: execute rank 0's commands until it says stop (or the group fails),
        through the public calls of `store`, whose strategy this is (on ranks > 0 it sends
        nothing; the step and the drop take effect here as on rank 0)."""
        device = store.device
        while True:
            header = torch.zeros(HEADER, dtype=torch.int64, device=device)
            dist.broadcast(header, 0)
            op = int(header[0])
            if op == OP_STOP:
                return
            if op == OP_COMPUTE:
                inputs_dtype, targets_dtype = DTYPES[int(header[1])], DTYPES[int(header[2])]
                inputs_dims, targets_dims = int(header[3]), int(header[4])
                shapes = self._to_device(torch.zeros(inputs_dims + targets_dims, dtype=torch.int64))
                dist.broadcast(shapes, 0)
                dims = [int(d) for d in shapes.tolist()]
                weight = self._to_device(torch.zeros(1, dtype=torch.float64))
                dist.broadcast(weight, 0)
                inputs = torch.empty(dims[:inputs_dims], dtype=inputs_dtype, device=device)
                targets = torch.empty(dims[inputs_dims:], dtype=targets_dtype, device=device)
                dist.broadcast(inputs, 0)
                dist.broadcast(targets, 0)
                factor = float(weight)
                # Rank 0 raises the same error from the same reduced values.
                with contextlib.suppress(GradserveError):
                    store.compute_gradients(inputs, targets, weigh=_constant(factor))
            elif op == OP_STEP:
                settings = self._to_device(torch.zeros(1 + SETTINGS, dtype=torch.float64))
                dist.broadcast(settings, 0)
                rate, *rest = settings.tolist()
                overrides, clip = settings_from_vector(rest)
                reduction = REDUCTIONS[int(header[1])]
                store.apply_update(
                    rate, reduction=reduction, hyperparameters=overrides, max_grad_norm=clip
                )
            elif op == OP_RESTORE:
                self._broadcast_state()
            elif op == OP_SYNC:
                self._broadcast_parameters()
                store.discard_gradients()


def data_parallel_store(
    model: Model,
    optimizer: Optimizer,
    request_id_window: int = 1024,
    request_id_window_bytes: int = DEFAULT_WINDOW_BYTES,
) -> ParameterStore:
    """A ParameterStore holding this module's strategy: what distributed_launch.py's
    store_factory gives rank 0's runs, and what every rank > 0 follows with."""
    return ParameterStore(
        model,
        optimizer,
        request_id_window,
        request_id_window_bytes,
        compute_strategy=DataParallelCompute,
    )


def _constant(factor: float) -> Callable[[int], float]:
    return lambda _version: factor
