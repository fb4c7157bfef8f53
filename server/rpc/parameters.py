"""The RPCs of a run's parameters: get, set, stream, upload, and the model's info.

One of the handlers the servicer (servicer.py) delegates to: decode, one call to the run's
ServedRun, encode. GetParameters and StreamParameters answer bytes already serialised, and
UploadParameters reads chunks parsed by hand (raw_handlers.py registers them so).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator

import grpc

from gradserve import serde
from gradserve.chunks import (
    DEFAULT_CHUNK_BYTES,
    MIN_CHUNK_BYTES,
    ChunkAssembler,
    tensor_to_wire_chunks,
)
from gradserve.errors import InvalidArgumentError
from gradserve.serde_parameters import set_result_to_proto, uploaded_parameters_to_proto
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.wire_messages import ChunkView, get_parameters_response

from ..datasets.registry import DatasetRegistry
from .runs import RunAccess
from .training import optional


class ParameterRpcs:
    def __init__(
        self, access: RunAccess, datasets: DatasetRegistry, max_message_bytes: int
    ) -> None:
        self._access = access
        self._datasets = datasets
        self._max_message_bytes = max_message_bytes

    def GetParameters(
        self, request: pb.GetParametersRequest, context: grpc.ServicerContext
    ) -> bytes:
        # The response's bytes, written straight from the live tensors under the store's lock
        # (one copy; raw_handlers.py sends them as they are), once the names and the
        # response's size are checked.
        with self._access.use(request.run, context) as served:
            return served.encode_parameters(
                list(request.names),
                get_parameters_response,
                max_bytes=self._max_message_bytes,
                include_buffers=request.include_buffers,
            )

    def SetParameters(
        self, request: pb.SetParametersRequest, context: grpc.ServicerContext
    ) -> pb.SetParametersResponse:
        values = serde.named_tensor_views_from_proto(request.parameters, "parameters")
        with self._access.use(request.run, context) as served:
            result = served.set_parameters(
                values,
                expected_version=optional(request, "expected_version"),
                request_id=request.request_id,
            )
        return set_result_to_proto(result)

    def GetModelInfo(
        self, request: pb.GetModelInfoRequest, context: grpc.ServicerContext
    ) -> pb.GetModelInfoResponse:
        with self._access.use(request.run, context) as served:
            info = dataclasses.replace(
                served.info(),
                run=request.run,
                dataset_bytes_available=self._datasets.available(),
            )
        return serde.model_info_to_proto(info)

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
        with self._access.use(request.run, context) as served:
            version, values = served.snapshot_parameters(
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
        with self._access.use(run, context) as served:
            info = served.info()
            specs = (*info.parameters, *info.buffers)
            assembler = ChunkAssembler(
                {spec.name: (spec.dtype, spec.shape) for spec in specs}, fingerprint=True
            )
            for chunk in itertools.chain([first] if first is not None else [], chunks):
                assembler.add(chunk)
            values = assembler.tensors()
            assert first is not None  # tensors() rejects an empty upload
            result = served.set_parameters(
                values,
                expected_version=first.expected_version,
                request_id=first.request_id,
                method="UploadParameters",
                values_digest=assembler.fingerprint(),
            )
        return uploaded_parameters_to_proto(result)
