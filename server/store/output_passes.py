"""The store's half of client-computed losses (ComputeOutputs, BackwardOutputs) and of
per-batch losses (a batch's own loss function in place of the run's).

Owned by ParameterStore (parameter_store.py), which delegates both calls to it after
refusing them under data parallelism; it reads the store's LiveState (live_state.py) and adds
through the store's `_add`. compute_outputs runs the model forward in training mode and keeps the outputs with their graph
under a handle (output_handles.py); backward_outputs backpropagates the client's dL/d(outputs)
through that same graph and adds the result to .grad exactly as a ComputeGradients batch is
added (weights, finiteness checks, counts). The forward pass updates batch norm's running
statistics as `module(x)` does in torch; a refused ComputeOutputs puts them back.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from gradserve.codec import torch_dtype_name
from gradserve.errors import FailedPreconditionError, InvalidArgumentError
from gradserve.types import GradientResult, OutputsResult

from ..models.model import all_finite
from .accumulation import Gradients
from .buffers import check_training_batch
from .live_state import LiveState
from .output_handles import HandleBounds, OutputHandles, saved_bytes
from .request_ids import check_request_id


@dataclass(frozen=True, slots=True)
class _Issued:
    """What the request-id window keeps of a ComputeOutputs: the handle, not the outputs."""

    handle: str
    replayed: bool = False


class OutputPasses:
    """ComputeOutputs and BackwardOutputs on one store's LiveState, with the kept passes.
    `add` is the store's: what a backward pass yields is added as a batch's gradients are."""

    def __init__(self, state: LiveState, add: Callable[[Gradients, int, float], None]) -> None:
        self._state = state
        self._add = add
        self.handles = OutputHandles()

    def compute_outputs(
        self, inputs: torch.Tensor, *, request_id: str = "", bounds: HandleBounds | None = None
    ) -> OutputsResult:
        """Forward in training mode; the outputs, and a handle of the pass for backward."""
        check_request_id(request_id)
        bounds = bounds or HandleBounds()
        batch_size = self._state.model.check_batch(inputs, None)
        check_training_batch(batch_size, self._state.smallest_batch)

        def run() -> _Issued:
            self.handles.check_room(self._state.version, bounds)
            module = self._state.model.module
            if not module.training:
                module.train()
            with self._state.buffer_keeper.kept():
                with saved_bytes(self._state.parameters) as size:
                    outputs = module(inputs.to(self._state.device))
                if not outputs.is_floating_point() or not all_finite(outputs.detach()):
                    raise FailedPreconditionError(
                        f"inputs: the outputs are not finite for this batch at model version "
                        f"{self._state.version}; nothing was kept",
                        field="inputs",
                        reason="NOT_FINITE",
                    )
                handle = self.handles.keep(
                    outputs, self._state.version, batch_size, size[0], bounds
                )
                return _Issued(handle)

        with self._state.lock:
            handle = self._state.request_ids.remembered(
                "compute_outputs", request_id, run, inputs
            ).handle
            # A replay answers from the kept pass: once it is used or gone, so is the answer.
            kept = self.handles.peek(handle, self._state.version)
            return OutputsResult(
                handle,
                kept.outputs.detach().cpu(),
                kept.version,
                self.handles.expires_in(kept),
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
            kept = self.handles.peek(handle, self._state.version)
            _check_output_gradients(output_gradients, kept.outputs)
            weight = 1.0 if weigh is None else weigh(self._state.version)
            with torch.no_grad():
                seed = output_gradients.to(self._state.device)
            # retain_graph: a refused add (non-finite, overflow) keeps the handle usable.
            gradients = torch.autograd.grad(
                kept.outputs, self._state.parameters, seed, retain_graph=True, allow_unused=True
            )
            self._add(gradients, kept.batch_size, weight)
            self.handles.release(handle)
            return GradientResult(
                loss=loss,
                batch_size=kept.batch_size,
                accumulated_batches=self._state.accumulated_batches,
                accumulated_samples=self._state.accumulated_samples,
                model_version=self._state.version,
            )

        with self._state.lock:
            return self._state.request_ids.remembered(
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
