"""Client-computed losses: a loss written in PyTorch on the client, over the server's outputs.

A call group of GradientClient, over its CallChannel. `compute_gradients_with(loss_fn, inputs, *extra)` asks the server
for the model's outputs (ComputeOutputs, which keeps that forward pass under a handle), runs
`loss_fn(outputs, *extra)` here with autograd, and sends dL/d(outputs) back (BackwardOutputs);
the server backpropagates it through the very pass whose outputs `loss_fn` saw and adds the
result to .grad as ComputeGradients does. docs/losses.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gradserve.codec import tensor_to_proto
from gradserve.serde_losses import backward_result_from_proto, outputs_result_from_proto
from gradserve.types import GradientResult, OutputsResult
from gradserve.v1 import gradserve_pb2 as pb

from .call_channel import CallChannel
from .retry import new_request_id

LossFn = Callable[..., torch.Tensor]


class CustomLosses:
    """Losses computed on the client over the server's outputs, over one CallChannel."""

    def __init__(self, channel: CallChannel) -> None:
        self._channel = channel

    def compute_outputs(
        self, inputs: torch.Tensor, *, request_id: str | None = None
    ) -> OutputsResult:
        """The model's outputs for a batch (training mode), kept on the server under a handle
        that one backward_outputs may use, until it expires or the run's version changes."""
        request = pb.ComputeOutputsRequest(
            inputs=tensor_to_proto(inputs),
            request_id=request_id or new_request_id(),
            run=self._channel.run,
        )
        return outputs_result_from_proto(
            self._channel.call(self._channel.stub.ComputeOutputs, request)
        )

    def backward_outputs(
        self,
        handle: str,
        output_gradients: torch.Tensor,
        loss: float,
        *,
        request_id: str | None = None,
        based_on_version: int | None = None,
    ) -> GradientResult:
        """Backpropagate dL/d(outputs) through the pass `handle` names into .grad."""
        request = pb.BackwardOutputsRequest(
            handle=handle,
            output_gradients=tensor_to_proto(output_gradients.detach().contiguous()),
            loss=loss,
            request_id=request_id or new_request_id(),
            run=self._channel.run,
        )
        if based_on_version is not None:
            request.based_on_version = based_on_version
        return backward_result_from_proto(
            self._channel.call(self._channel.stub.BackwardOutputs, request)
        )

    def compute_gradients_with(
        self,
        loss_fn: LossFn,
        inputs: torch.Tensor,
        *extra: Any,
        based_on_version: int | None = None,
    ) -> GradientResult:
        """ComputeGradients with a loss computed here: `loss_fn(outputs, *extra)` must return
        a scalar tensor that depends on `outputs` (any PyTorch expression: per-example,
        across the batch, weighted). The result's loss is the value it returned."""
        kept = self.compute_outputs(inputs)
        outputs = kept.outputs.detach().requires_grad_(True)
        loss = loss_fn(outputs, *extra)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn must return a tensor with one element (the batch's loss)")
        (gradient,) = torch.autograd.grad(loss.reshape(()), outputs)
        return self.backward_outputs(
            kept.handle, gradient, float(loss.detach()), based_on_version=based_on_version
        )


__all__ = ["CustomLosses", "LossFn"]
