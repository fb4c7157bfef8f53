"""The RPCs of client-computed losses: ComputeOutputs and BackwardOutputs.

One of the handlers the servicer (servicer.py) delegates to: decode, one call to the run's
ServedRun, encode. The work is in the store (output_passes.py); docs/losses.md.
"""

from __future__ import annotations

import grpc
import torch

from gradserve.codec import tensor_from_proto
from gradserve.serde_losses import backward_result_to_proto, outputs_result_to_proto
from gradserve.v1 import gradserve_pb2 as pb

from .runs import RunAccess


class LossRpcs:
    def __init__(self, access: RunAccess, max_elements: int) -> None:
        self._access = access
        self._max_elements = max_elements

    def ComputeOutputs(
        self, request: pb.ComputeOutputsRequest, context: grpc.ServicerContext
    ) -> pb.ComputeOutputsResponse:
        inputs = tensor_from_proto(request.inputs, "inputs", max_elements=self._max_elements)
        with self._access.use(request.run, context) as served:
            result = served.compute_outputs(inputs, request_id=request.request_id)
        return outputs_result_to_proto(result)

    def BackwardOutputs(
        self, request: pb.BackwardOutputsRequest, context: grpc.ServicerContext
    ) -> pb.BackwardOutputsResponse:
        gradients: torch.Tensor = tensor_from_proto(
            request.output_gradients, "output_gradients", max_elements=self._max_elements
        )
        based_on = request.based_on_version if request.HasField("based_on_version") else None
        with self._access.use(request.run, context) as served:
            result = served.backward_outputs(
                request.handle,
                gradients,
                request.loss,
                request_id=request.request_id,
                based_on_version=based_on,
            )
        return backward_result_to_proto(result)
