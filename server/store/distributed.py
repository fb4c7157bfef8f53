"""Server-side data parallelism over torch.distributed: one model replica per rank, one gRPC
server on rank 0 (`torchrun --nproc-per-node W server/serve.py ...`; docs/scaling.md).

Rank 0 runs the usual ParameterStore behind gRPC; every other rank loops on commands from rank
0. Only tensors cross between ranks (broadcast, all_reduce; no pickled objects):
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
from gradserve.types import Reduction, UpdateResult

from ..models.hyperparameters import (
    NO_OVERRIDES,
    SETTINGS,
    Hyperparameters,
    settings_from_vector,
    settings_vector,
)
from .accumulation import Gradients, check_gradients, check_loss
from .parameter_store import ParameterStore
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


class DistributedParameterStore(ParameterStore):
    """A ParameterStore whose gradients are computed by all ranks; see the module docstring."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        self.failed: str | None = None
        self.on_failure: Callable[[], None] = lambda: None
        self._stopped = threading.Event()

    # -- rank 0: the hooks ParameterStore calls with its lock held --------------------------

    def _compute(
        self, inputs: torch.Tensor, targets: torch.Tensor, weight: float
    ) -> tuple[float, Gradients]:
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

    def _step(
        self,
        learning_rate: float,
        reduction: Reduction,
        expected_version: int | None,
        hyperparameters: Hyperparameters = NO_OVERRIDES,
        max_grad_norm: float | None = None,
    ) -> UpdateResult:
        result = super()._step(
            learning_rate, reduction, expected_version, hyperparameters, max_grad_norm
        )
        settings = [learning_rate, *settings_vector(hyperparameters, max_grad_norm)]

        def send() -> None:
            self._broadcast_header([OP_STEP, REDUCTIONS.index(reduction)])
            dist.broadcast(self._to_device(torch.tensor(settings, dtype=torch.float64)), 0)

        self._collective(send)
        return result

    def _drop_gradients(self) -> None:
        super()._drop_gradients()
        if self.rank == 0:

            def send() -> None:
                self._broadcast_header([OP_SYNC])
                self._broadcast_parameters()

            self._collective(send)

    def restore_state(self, state: StoreState) -> None:
        """A checkpoint restored on rank 0 reaches every rank: parameters, gradients, counts.
        Optimizer state (momentum, Adam's moments) has no tensor-only form here: refused."""
        if state.optimizer.get("state"):
            raise FailedPreconditionError(
                "checkpoint: restoring optimizer state (momentum, Adam) into a distributed "
                "server is not supported; use a single-process server or plain SGD",
                field="checkpoint",
            )
        super().restore_state(state)

        def send() -> None:
            self._broadcast_header([OP_RESTORE])
            self._broadcast_state()

        with self._lock:
            self._collective(send)

    def _broadcast_state(self) -> None:
        """Parameters, which have .grad, the gradients, and the counts, from rank 0."""
        self._broadcast_parameters()
        has = [p.grad is not None for p in self._parameters]
        mask = self._to_device(torch.tensor(has, dtype=torch.int64))
        dist.broadcast(mask, 0)
        counts = torch.tensor([self.accumulated_batches, self.accumulated_samples])
        counts = self._to_device(counts)
        dist.broadcast(counts, 0)
        for parameter, present in zip(self._parameters, mask.tolist(), strict=True):
            if present:
                if parameter.grad is None:
                    parameter.grad = torch.zeros_like(parameter)
                dist.broadcast(parameter.grad, 0)
            else:
                parameter.grad = None
        self.accumulated_batches, self.accumulated_samples = (int(c) for c in counts.tolist())

    # -- every rank ------------------------------------------------------------------------

    def _compute_shards(
        self, inputs: torch.Tensor, targets: torch.Tensor
    ) -> tuple[float, Gradients]:
        """This rank's shard, all-reduced into the full batch's loss and gradients, checked
        as the store checks its own (accumulation.py); every rank then adds them (_add)."""
        total = inputs.shape[0]
        rows = torch.tensor_split(torch.arange(total), self.world_size)[self.rank]
        parameters = self._parameters
        share = len(rows) / total if total else 0.0
        grads: Gradients
        if len(rows):
            self.model.module.train()
            shard_loss = self.model.loss.function(
                self.model.module(inputs[rows].to(self.device)), targets[rows].to(self.device)
            )
            grads = torch.autograd.grad(shard_loss * share, parameters, allow_unused=True)
            loss_part = shard_loss.detach().double() * share
        else:
            grads = tuple(None for _ in parameters)
            loss_part = torch.zeros((), dtype=torch.float64, device=self.device)
        flat = [
            (g if g is not None else torch.zeros_like(p)).reshape(-1)
            for p, g in zip(parameters, grads, strict=True)
        ]
        # One all_reduce for all gradients (same dtype) and one for the loss.
        buffer = torch.cat(flat) if flat else torch.zeros(0, device=self.device)
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
        check_loss(loss_value, self.version)
        check_gradients(self._named, tuple(gradients), self.version)
        return loss_value, tuple(gradients)

    def _broadcast_parameters(self) -> None:
        with torch.no_grad():
            for parameter in self._parameters:
                dist.broadcast(parameter.data, 0)

    def _broadcast_header(self, values: Sequence[int]) -> None:
        header = torch.zeros(HEADER, dtype=torch.int64)
        header[: len(values)] = torch.tensor(values, dtype=torch.int64)
        dist.broadcast(self._to_device(header), 0)

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if tensor.device == self.device else tensor.to(self.device)

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
            with self._lock:
                if self.failed is not None or self._stopped.is_set():
                    return
                try:
                    self._collective(lambda: self._broadcast_header([OP_PING]))
                except UnavailableError:
                    return

    def stop_ranks(self) -> None:
        self._stopped.set()
        with self._lock:
            if self.failed is None:
                with contextlib.suppress(UnavailableError):
                    self._collective(lambda: self._broadcast_header([OP_STOP]))

    # -- ranks > 0 -------------------------------------------------------------------------

    def follow(self) -> None:
        """Execute rank 0's commands until it says stop (or the group fails)."""
        while True:
            header = torch.zeros(HEADER, dtype=torch.int64, device=self.device)
            dist.broadcast(header, 0)
            op = int(header[0])
            if op == OP_STOP:
                return
            if op == OP_COMPUTE:
                inputs_dtype, targets_dtype = DTYPES[int(header[1])], DTYPES[int(header[2])]
                inputs_dims, targets_dims = int(header[3]), int(header[4])
                shapes = torch.zeros(inputs_dims + targets_dims, dtype=torch.int64)
                shapes = self._to_device(shapes)
                dist.broadcast(shapes, 0)
                dims = [int(d) for d in shapes.tolist()]
                weight = self._to_device(torch.zeros(1, dtype=torch.float64))
                dist.broadcast(weight, 0)
                inputs = torch.empty(dims[:inputs_dims], dtype=inputs_dtype, device=self.device)
                targets = torch.empty(dims[inputs_dims:], dtype=targets_dtype, device=self.device)
                dist.broadcast(inputs, 0)
                dist.broadcast(targets, 0)
                # Rank 0 raises the same error from the same reduced values.
                with contextlib.suppress(GradserveError):
                    _, gradients = self._compute_shards(inputs, targets)
                    self._add(gradients, int(inputs.shape[0]), float(weight))
            elif op == OP_STEP:
                settings = self._to_device(torch.zeros(1 + SETTINGS, dtype=torch.float64))
                dist.broadcast(settings, 0)
                rate, *rest = settings.tolist()
                overrides, clip = settings_from_vector(rest)
                reduction = REDUCTIONS[int(header[1])]
                ParameterStore._step(self, rate, reduction, None, overrides, clip)
            elif op == OP_RESTORE:
                self._broadcast_state()
            elif op == OP_SYNC:
                self._broadcast_parameters()
                ParameterStore._drop_gradients(self)
