"""The GradientService servicer: decode the request, make one call to the run's coordinator,
encode.

No torch arithmetic, no metrics and no error handling here: the run's coordinator
(coordination.py) does the work through its store and records what it did; the interceptor
turns the project's errors into statuses; gradserve.serde converts between plain types and
messages. Every request names its run; the registry (runs.py) finds it for the caller's
principal. The RPCs that manage runs are in run_rpcs.py, their checkpoints' in
checkpoint_rpcs.py.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import grpc
import torch

from gradserve import serde, serde_graph
from gradserve.chunks import (
    DEFAULT_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    ChunkAssembler,
    tensor_to_wire_chunks,
)
from gradserve.codec import tensor_from_proto
from gradserve.errors import InvalidArgumentError
from gradserve.pass_types import PassResult
from gradserve.serde_datasets import dataset_batch_from_proto
from gradserve.serde_losses import batch_loss_from_proto
from gradserve.serde_passes import pass_response_to_proto
from gradserve.types import DatasetBatch
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc
from gradserve.wire_messages import ChunkView, get_parameters_response

from ..config import LimitsConfig
from ..datasets.registry import DatasetRegistry
from ..runs.principals import PrincipalTable
from ..runs.registry import RunRegistry
from .checkpoints import CheckpointRpcs
from .datasets import DatasetRpcs
from .outputs import LossRpcs


def _named_batch(request: pb.ComputeGradientsRequest) -> DatasetBatch | None:
    """The batch as dataset samples, when the request names them instead of sending them."""
    if not request.HasField("dataset"):
        return None
    if request.HasField("inputs") or request.HasField("targets"):
        raise InvalidArgumentError(
            "dataset: a batch is named by a dataset or sent (inputs and targets), not both",
            field="dataset",
        )
    return dataset_batch_from_proto(request.dataset, "dataset")


def _optional(message: object, name: str) -> int | None:
    return getattr(message, name) if message.HasField(name) else None  # type: ignore[attr-defined]


class GradientServicer(
    LossRpcs,
    DatasetRpcs,
    CheckpointRpcs,
    pb_grpc.GradientServiceServicer,  # type: ignore[misc]
):
    def __init__(
        self,
        runs: RunRegistry,
        limits: LimitsConfig,
        principals: PrincipalTable | None = None,
        datasets: DatasetRegistry | None = None,
    ) -> None:
        super().__init__(runs, principals or PrincipalTable())
        self._max_elements = limits.max_batch_elements
        self._max_message_bytes = limits.max_message_bytes
        self._datasets = datasets or DatasetRegistry()

    def _batch(self, message: pb.Tensor, field: str) -> torch.Tensor:
        return tensor_from_proto(message, field, max_elements=self._max_elements)

    def ComputeGradients(
        self, request: pb.ComputeGradientsRequest, context: grpc.ServicerContext
    ) -> pb.ComputeGradientsResponse:
        if not context.is_active():
            # The caller is gone (cancelled, deadline passed) while the call queued: skip the work.
            context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled before it ran")
        named = _named_batch(request)
        if named is None:
            inputs = self._batch(request.inputs, "inputs")
            targets = self._batch(request.targets, "targets")
        with self._use(request.run, context) as coordinator:
            if named is not None:
                inputs, targets = self._dataset_batches(request.run, context)(named, "dataset")
            result = coordinator.compute_gradients(
                inputs,
                targets,
                request_id=request.request_id,
                return_gradients=request.return_gradients,
                based_on_version=_optional(request, "based_on_version"),
                batch_loss=batch_loss_from_proto(request, max_elements=self._max_elements),
            )
        return serde.gradient_result_to_proto(result)

    def ApplyUpdate(
        self, request: pb.ApplyUpdateRequest, context: grpc.ServicerContext
    ) -> pb.ApplyUpdateResponse:
        reduction = serde.reduction_from_proto(request.reduction)
        with self._use(request.run, context) as coordinator:
            result = coordinator.apply_update(
                request.learning_rate,
                reduction=reduction,
                expected_version=_optional(request, "expected_version"),
                request_id=request.request_id,
                time_remaining=context.time_remaining(),
                hyperparameters=dict(request.hyperparameters),
                max_grad_norm=_optional(request, "max_grad_norm"),
            )
        return serde.update_result_to_proto(result)

    def Evaluate(
        self, request: pb.EvaluateRequest, context: grpc.ServicerContext
    ) -> pb.EvaluateResponse:
        targets = self._batch(request.targets, "targets") if request.HasField("targets") else None
        inputs = self._batch(request.inputs, "inputs")
        with self._use(request.run, context) as coordinator:
            result = coordinator.evaluate(
                inputs, targets, return_predictions=request.return_predictions
            )
        return serde.evaluation_result_to_proto(result)

    def GetParameters(
        self, request: pb.GetParametersRequest, context: grpc.ServicerContext
    ) -> bytes:
        # The response's bytes, written straight from the live tensors under the store's lock
        # (one copy; raw_handlers.py sends them as they are), once the names and the
        # response's size are checked.
        with self._use(request.run, context) as coordinator:
            return coordinator.encode_parameters(
                list(request.names),
                get_parameters_response,
                max_bytes=self._max_message_bytes,
                include_buffers=request.include_buffers,
            )

    def SetParameters(
        self, request: pb.SetParametersRequest, context: grpc.ServicerContext
    ) -> pb.SetParametersResponse:
        values = serde.named_tensor_views_from_proto(request.parameters, "parameters")
        with self._use(request.run, context) as coordinator:
            result = coordinator.set_parameters(
                values,
                expected_version=_optional(request, "expected_version"),
                request_id=request.request_id,
            )
        return pb.SetParametersResponse(model_version=result.model_version)

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetModelInfoResponse:
        with self._use(request.run, context) as coordinator:
            info = dataclasses.replace(
                coordinator.info(),
                run=request.run,
                dataset_bytes_available=self._datasets.available(),
            )
        return serde.model_info_to_proto(info)

    def DiscardGradients(
        self, request: pb.DiscardGradientsRequest, context: grpc.ServicerContext
    ) -> pb.DiscardGradientsResponse:
        with self._use(request.run, context) as coordinator:
            result = coordinator.discard_gradients()
        return pb.DiscardGradientsResponse(
            discarded_batches=result.discarded_batches, model_version=result.model_version
        )

    def DescribeGraph(
        self, request: pb.DescribeGraphRequest, context: grpc.ServicerContext
    ) -> pb.DescribeGraphResponse:
        inputs = self._batch(request.inputs, "inputs")
        targets = self._batch(request.targets, "targets")
        with self._use(request.run, context) as coordinator:
            result = coordinator.describe_graph(
                inputs,
                targets,
                max_nodes=request.max_nodes,
                return_gradients=request.return_gradients,
            )
        return serde_graph.graph_description_to_proto(result)

    def Train(
        self, request_iterator: Iterator[pb.TrainRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.TrainResponse]:
        requests = iter(request_iterator)
        first = next(requests, None)
        if first is None:
            return
        # One run for the whole stream: it stays loaded while the stream is open.
        with self._use(first.run, context) as coordinator:
            for request in itertools.chain([first], requests):
                if request.run != first.run:
                    raise InvalidArgumentError(
                        f"run: {request.run[:80]!r}, but this stream trains {first.run[:80]!r}",
                        field="run",
                    )
                if request.HasField("dataset_pass"):
                    expanded = self._dataset_pass(first.run, context, request)
                    result = coordinator.train_pass(expanded, request_id=request.request_id)
                    clips = expanded.steps[0].max_grad_norm is not None
                    answer = PassResult.of(result, norms=expanded.gradient_norms, clips=clips)
                    yield pass_response_to_proto(answer, request.request_id)
                    continue
                resolve = self._dataset_batches(first.run, context)
                steps = [
                    serde.train_step_from_proto(
                        step, f"steps[{index}]", self._max_elements, resolve
                    )
                    for index, step in enumerate(request.steps)
                ]
                result = coordinator.train(steps, request_id=request.request_id)
                yield serde.train_result_to_proto(result, request.request_id)

    def StreamParameters(
        self, request: pb.StreamParametersRequest, context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        # Room for the chunk's other fields within the message limit.
        largest = self._max_message_bytes - 1024
        chunk_bytes = request.chunk_bytes or min(DEFAULT_CHUNK_BYTES, largest)
        if chunk_bytes < 0 or chunk_bytes > largest:
            raise InvalidArgumentError(
                f"chunk_bytes: {chunk_bytes}, expected 0 (default) or 1..{largest}",
                field="chunk_bytes",
            )
        # Smaller chunks would cost a message each for little data (docs/protocol.md).
        chunk_bytes = max(chunk_bytes, min(MIN_CHUNK_BYTES, largest))
        # One consistent copy under the lock (state_transfer.py: at most the model's size);
        # the chunks are cut from it as wire bytes, one at a time as they are sent.
        with self._use(request.run, context) as coordinator:
            version, values = coordinator.snapshot_parameters(
                list(request.names), include_buffers=request.include_buffers
            )
        for name, value in values:
            yield from tensor_to_wire_chunks(name, value, chunk_bytes, version)

    def UploadParameters(
        self, request_iterator: Iterator[ChunkView], context: grpc.ServicerContext
    ) -> pb.UploadParametersResponse:
        # ChunkView: raw_handlers.py parses each chunk with `data` a view of its bytes.
        chunks = iter(request_iterator)
        first = next(chunks, None)
        run = first.checked("chunks[0]").run if first is not None else ""
        with self._use(run, context) as coordinator:
            info = coordinator.info()
            specs = (*info.parameters, *info.buffers)
            assembler = ChunkAssembler(
                {spec.name: (spec.dtype, spec.shape) for spec in specs}, fingerprint=True
            )
            for chunk in itertools.chain([first] if first is not None else [], chunks):
                assembler.add(chunk)
            values = assembler.tensors()
            assert first is not None  # tensors() rejects an empty upload
            result = coordinator.set_parameters(
                values,
                expected_version=first.expected_version,
                request_id=first.request_id,
                method="UploadParameters",
                values_digest=assembler.fingerprint(),
            )
        return pb.UploadParametersResponse(model_version=result.model_version)
