"""The store's half of client-computed losses (ComputeOutputs, BackwardOutputs) and of
per-batch losses (a batch's own loss function in place of the run's).

A mixin of ParameterStore (it uses the store's lock, request-id windows, buffers and `_add`).
compute_outputs runs the model forward in training mode and keeps the outputs with their graph
under a handle (output_handles.py); backward_outputs backpropagates the client's dL/d(outputs)
through that same graph and adds the result to .grad exactly as a ComputeGradients batch is
added (weights, finiteness checks, counts). The forward pass updates batch norm's running
statistics as `module(x)` does in torch; a refused ComputeOutputs puts them back.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gradserve.codec import torch_dtype_name
from gradserve.errors import FailedPreconditionError, InvalidArgumentError
from gradserve.types import GradientResult, OutputsResult

from ..models.model import LossFunction, Model, all_finite
from .accumulation import Gradients, batch_gradients
from .buffers import BufferKeeper, check_training_batch
from .output_handles import HandleBounds, OutputHandles, saved_bytes
from .request_ids import RequestIdWindow, check_request_id


@dataclass(frozen=True, slots=True)
class _Issued:
    """What the request-id window keeps of a ComputeOutputs: the handle, not the outputs."""

    handle: str
    replayed: bool = False


class OutputPasses:
    # The ParameterStore's, set by its __init__.
    model: Model
    version: int
    accumulated_batches: int
    accumulated_samples: int
    device: torch.device
    output_handles: OutputHandles
    _lock: threading.Lock
    _request_ids: RequestIdWindow
    _buffer_keeper: BufferKeeper
    _named: dict[str, torch.nn.Parameter]
    _parameters: list[torch.nn.Parameter]
    _smallest_batch: int

    def local_only(self, field: str) -> None:
        """Per-batch losses and kept graphs are computed on this process: data parallelism
        (server/store/distributed.py) computes only the run's loss over its ranks."""
        if getattr(self, "world_size", 1) != 1:
            raise FailedPreconditionError(
                f"{field}: not served with data parallelism (--nproc); use the run's loss",
                field=field,
                reason="UNSUPPORTED_IN_MODE",
            )

    def _add(self, gradients: Gradients, batch_size: int, weight: float) -> None:
        raise NotImplementedError  # the store's

    def _compute_with(
        self, inputs: torch.Tensor, targets: torch.Tensor, loss_function: LossFunction
    ) -> tuple[float, Gradients]:
        """The store's _compute with the batch's own loss (per-batch losses are local_only)."""
        inputs, targets = inputs.to(self.device), targets.to(self.device)
        return batch_gradients(
            self.model,
            self._named,
            self._parameters,
            inputs,
            targets,
            version=self.version,
            loss_function=loss_function,
        )

    def compute_outputs(
        self, inputs: torch.Tensor, *, request_id: str = "", bounds: HandleBounds | None = None
    ) -> OutputsResult:
        """Forward in training mode; the outputs, and a handle of the pass for backward."""
        check_request_id(request_id)
        self.local_only("inputs")
        bounds = bounds or HandleBounds()
        batch_size = self.model.check_batch(inputs, None)
        check_training_batch(batch_size, self._smallest_batch)

        def run() -> _Issued:
            self.output_handles.check_room(self.version, bounds)
            module = self.model.module
            if not module.training:
                module.train()
            with self._buffer_keeper.kept():
                with saved_bytes(self._parameters) as size:
                    outputs = module(inputs.to(self.device))
                if not outputs.is_floating_point() or not all_finite(outputs.detach()):
                    raise FailedPreconditionError(
                        f"inputs: the outputs are not finite for this batch at model version "
                        f"{self.version}; nothing was kept",
                        field="inputs",
                        reason="NOT_FINITE",
                    )
                handle = self.output_handles.keep(
                    outputs, self.version, batch_size, size[0], bounds
                )
                return _Issued(handle)

        with self._lock:
            handle = self._request_ids.remembered("compute_outputs", request_id, run, inputs).handle
            # A replay answers from the kept pass: once it is used or gone, so is the answer.
            kept = self.output_handles.peek(handle, self.version)
            return OutputsResult(
                handle,
                kept.outputs.detach().cpu(),
                kept.version,
                self.output_handles.expires_in(kept),
                kept.batch_size,
            )

    def backward_outputs(
        self,
        handle: str,
        output_gradients: torch.Tensor,
        loss: float,
        *,
        request_id: str = "",
        weigh: Callable[[int], float] | None = None,
    ) -> GradientResult:
        """Backpropagate dL/d(outputs) through the kept pass into .grad; use up the handle.
        `weigh` as in compute_gradients (async mode). A refused call leaves the handle."""
        check_request_id(request_id)
        if not math.isfinite(loss):
            raise InvalidArgumentError(f"loss: {loss}, expected a finite number", field="loss")

        def run() -> GradientResult:
            kept = self.output_handles.peek(handle, self.version)
            _check_output_gradients(output_gradients, kept.outputs)
            weight = 1.0 if weigh is None else weigh(self.version)
            with torch.no_grad():
                seed = output_gradients.to(self.device)
            # retain_graph: a refused add (non-finite, overflow) keeps the handle usable.
            gradients = torch.autograd.grad(
                kept.outputs, self._parameters, seed, retain_graph=True, allow_unused=True
            )
            self._add(gradients, kept.batch_size, weight)
            self.output_handles.release(handle)
            return GradientResult(
                loss=loss,
                batch_size=kept.batch_size,
                accumulated_batches=self.accumulated_batches,
                accumulated_samples=self.accumulated_samples,
                model_version=self.version,
            )

        with self._lock:
            return self._request_ids.remembered(
                "backward_outputs", request_id, run, handle, output_gradients, loss
            )


def _check_output_gradients(gradients: torch.Tensor, outputs: torch.Tensor) -> None:
    if gradients.dtype != outputs.dtype:
        raise InvalidArgumentError(
            f"output_gradients.dtype: {torch_dtype_name(gradients.dtype)}, expected "
            f"{torch_dtype_name(outputs.dtype)} (the outputs')",
            field="output_gradients.dtype",
        )
    if gradients.shape != outputs.shape:
        raise InvalidArgumentError(
            f"output_gradients.shape: {list(gradients.shape)}, expected "
            f"{list(outputs.shape)} (the outputs')",
            field="output_gradients.shape",
        )
    if not all_finite(gradients):
        raise InvalidArgumentError(
            "output_gradients.data: contains NaN or Inf", field="output_gradients.data"
        )
