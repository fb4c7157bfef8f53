"""The GradientService servicer: decode the request, make one call to the coordinator, encode.

No torch arithmetic, no metrics and no error handling here: the coordinator (coordination.py)
does the work through the store and records what it did; the interceptor turns the project's
errors into statuses; gradserve.serde converts between plain types and messages.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import torch

from gradserve import serde
from gradserve.codec import (
    DEFAULT_CHUNK_BYTES,
    ChunkAssembler,
    tensor_from_proto,
    tensor_into_proto,
    tensor_to_chunks,
)
from gradserve.errors import FailedPreconditionError, InvalidArgumentError
from gradserve.server.checkpoints import Checkpointer
from gradserve.server.coordination import DirectCoordinator
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc


def _optional(message: object, name: str) -> int | None:
    return getattr(message, name) if message.HasField(name) else None  # type: ignore[attr-defined]


class GradientServicer(pb_grpc.GradientServiceServicer):  # type: ignore[misc]
    def __init__(
        self, coordinator: DirectCoordinator, checkpointer: Checkpointer | None = None
    ) -> None:
        self._coordinator = coordinator
        self._checkpointer = checkpointer
        self._max_elements = coordinator.limits.max_batch_elements
        self._max_message_bytes = coordinator.limits.max_message_bytes

    def _batch(self, message: pb.Tensor, field: str) -> torch.Tensor:
        return tensor_from_proto(message, field, max_elements=self._max_elements)

    def ComputeGradients(
        self, request: pb.ComputeGradientsRequest, context: grpc.ServicerContext
    ) -> pb.ComputeGradientsResponse:
        if not context.is_active():
            # The caller is gone (cancelled, deadline passed) while the call queued: skip the work.
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled before it ran")
        result = self._coordinator.compute_gradients(
            self._batch(request.inputs, "inputs"),
            self._batch(request.targets, "targets"),
            request_id=request.request_id,
            return_gradients=request.return_gradients,
            based_on_version=_optional(request, "based_on_version"),
        )
        return serde.gradient_result_to_proto(result)

    def ApplyUpdate(
        self, request: pb.ApplyUpdateRequest, context: grpc.ServicerContext
    ) -> pb.ApplyUpdateResponse:
        result = self._coordinator.apply_update(
            request.learning_rate,
            reduction=serde.reduction_from_proto(request.reduction),
            expected_version=_optional(request, "expected_version"),
            request_id=request.request_id,
            time_remaining=context.time_remaining(),
        )
        return serde.update_result_to_proto(result)

    def Evaluate(
        self, request: pb.EvaluateRequest, context: grpc.ServicerContext
    ) -> pb.EvaluateResponse:
        targets = self._batch(request.targets, "targets") if request.HasField("targets") else None
        result = self._coordinator.evaluate(
            self._batch(request.inputs, "inputs"),
            targets,
            return_predictions=request.return_predictions,
        )
        return serde.evaluation_result_to_proto(result)

    def GetParameters(
        self, request: pb.GetParametersRequest, context: grpc.ServicerContext
    ) -> pb.GetParametersResponse:
        response = pb.GetParametersResponse()
        # Each parameter is written straight into the response, under the store's lock.
        response.model_version, _ = self._coordinator.read_parameters(
            list(request.names),
            lambda name, value: tensor_into_proto(value, response.parameters.add(), name),
        )
        return response

    def SetParameters(
        self, request: pb.SetParametersRequest, context: grpc.ServicerContext
    ) -> pb.SetParametersResponse:
        result = self._coordinator.set_parameters(
            serde.named_tensor_views_from_proto(request.parameters, "parameters"),
            expected_version=_optional(request, "expected_version"),
            request_id=request.request_id,
        )
        return pb.SetParametersResponse(model_version=result.model_version)

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetModelInfoResponse:
        return serde.model_info_to_proto(self._coordinator.info())

    def DiscardGradients(
        self, request: pb.DiscardGradientsRequest, context: grpc.ServicerContext
    ) -> pb.DiscardGradientsResponse:
        result = self._coordinator.discard_gradients()
        return pb.DiscardGradientsResponse(
            discarded_batches=result.discarded_batches, model_version=result.model_version
        )

    def SaveCheckpoint(
        self, request: pb.SaveCheckpointRequest, context: grpc.ServicerContext
    ) -> pb.SaveCheckpointResponse:
        if self._checkpointer is None:
            raise FailedPreconditionError(
                "this server has no checkpoint directory (--checkpoint-dir)",
                field="checkpoint_dir",
                reason="NO_CHECKPOINT_DIRECTORY",
            )
        saved = self._checkpointer.save()
        return pb.SaveCheckpointResponse(
            name=saved.path.name,
            model_version=saved.model_version,
            accumulated_batches=saved.accumulated_batches,
        )

    def DescribeGraph(
        self, request: pb.DescribeGraphRequest, context: grpc.ServicerContext
    ) -> pb.DescribeGraphResponse:
        result = self._coordinator.describe_graph(
            self._batch(request.inputs, "inputs"),
            self._batch(request.targets, "targets"),
            max_nodes=request.max_nodes,
            return_gradients=request.return_gradients,
        )
        return serde.graph_description_to_proto(result)

    def Train(
        self, request_iterator: Iterator[pb.TrainRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.TrainResponse]:
        for request in request_iterator:
            steps = [
                serde.train_step_from_proto(step, f"steps[{index}]", self._max_elements)
                for index, step in enumerate(request.steps)
            ]
            result = self._coordinator.train(steps, request_id=request.request_id)
            yield serde.train_result_to_proto(result, request.request_id)

    def StreamParameters(
        self, request: pb.StreamParametersRequest, context: grpc.ServicerContext
    ) -> Iterator[pb.StreamParametersResponse]:
        # Room for the chunk's other fields within the message limit.
        largest = self._max_message_bytes - 1024
        chunk_bytes = request.chunk_bytes or min(DEFAULT_CHUNK_BYTES, largest)
        if chunk_bytes < 0 or chunk_bytes > largest:
            raise InvalidArgumentError(
                f"chunk_bytes: {chunk_bytes}, expected 0 (default) or 1..{largest}",
                field="chunk_bytes",
            )
        # The chunks' bytes are cut under the lock (one version, one copy of each byte) and
        # sent after it is released.
        version, chunked = self._coordinator.read_parameters(
            list(request.names),
            lambda name, value: list(tensor_to_chunks(name, value, chunk_bytes)),
        )
        for chunks in chunked:
            for chunk in chunks:
                chunk.model_version = version
                yield chunk

    def UploadParameters(
        self, request_iterator: Iterator[pb.UploadParametersRequest], context: grpc.ServicerContext
    ) -> pb.UploadParametersResponse:
        specs = self._coordinator.info().parameters
        assembler = ChunkAssembler({spec.name: (spec.dtype, spec.shape) for spec in specs})
        first: pb.UploadParametersRequest | None = None
        for chunk in request_iterator:
            first = first or chunk
            assembler.add(chunk)
        values = assembler.tensors()
        assert first is not None  # tensors() rejects an empty upload
        result = self._coordinator.set_parameters(
            values,
            expected_version=_optional(first, "expected_version"),
            request_id=first.request_id,
            method="UploadParameters",
        )
        return pb.UploadParametersResponse(model_version=result.model_version)
