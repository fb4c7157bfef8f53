"""The client's parameter transfers: GetParameters, StreamParameters, UploadParameters.

A call group of GradientClient, over its CallChannel. The three RPCs carry whole models, so their messages are written
and read by hand (gradserve.wire_messages, the same bytes protobuf makes): the client copies
each parameter's bytes once on the way out (into each chunk) and once on the way in (into a
writable tensor of its own, gradserve.huge_pages), instead of protobuf's three or four copies.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch

from gradserve.chunks import DEFAULT_CHUNK_BYTES, ChunkAssembler, tensor_to_wire_chunks
from gradserve.codec import tensor_from_parts
from gradserve.defaults import SERVICE_NAME
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.wire_messages import parse_chunk, parse_get_parameters_response

from .call_channel import CallChannel
from .retry import new_request_id

_PATH = f"/{SERVICE_NAME}/"


class ParameterTransfer:
    """Whole models in and out of the channel's run, over one CallChannel."""

    def __init__(self, channel: CallChannel) -> None:
        self._channel = channel

    def get_parameters(
        self, names: Iterable[str] = (), *, include_buffers: bool = False
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """(model_version, {name: value}); empty names: every parameter (then every buffer).
        Each value is a writable tensor of its own."""
        request = pb.GetParametersRequest(
            names=list(names), include_buffers=include_buffers, run=self._channel.run
        )
        # No response deserializer: the bytes are parsed here, so that a malformed answer is
        # an error naming its field rather than gRPC's INTERNAL.
        call = self._channel.grpc_channel.unary_unary(
            _PATH + "GetParameters", request_serializer=pb.GetParametersRequest.SerializeToString
        )
        version, views = parse_get_parameters_response(self._channel.call(call, request))
        return version, {
            view.name: tensor_from_parts(
                view.dtype, view.shape, view.data, f"parameters[{index}]", copy=True
            )
            for index, view in enumerate(views)
        }

    def stream_parameters(
        self, names: Iterable[str] = (), *, chunk_bytes: int = 0, include_buffers: bool = False
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """GetParameters in chunks: no message-size limit applies to the model's size."""
        request = pb.StreamParametersRequest(
            names=list(names), chunk_bytes=chunk_bytes, run=self._channel.run
        )
        request.include_buffers = include_buffers
        call = self._channel.grpc_channel.unary_stream(
            _PATH + "StreamParameters",
            request_serializer=pb.StreamParametersRequest.SerializeToString,
        )
        version = 0
        assembler = ChunkAssembler()
        for message in self._channel.responses(call, request):
            chunk = parse_chunk(message)
            assembler.add(chunk)
            version = chunk.model_version
        return version, {} if assembler.empty else dict(assembler.tensors())

    def upload_parameters(
        self,
        values: Mapping[str, torch.Tensor],
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        expected_version: int | None = None,
        request_id: str | None = None,
    ) -> int:
        """SetParameters in chunks, for models past the message limit; returns the version."""
        request_id = request_id or new_request_id()
        call = self._channel.grpc_channel.stream_unary(
            _PATH + "UploadParameters",
            response_deserializer=pb.UploadParametersResponse.FromString,
        )

        def chunks() -> Iterator[bytes]:
            first = True
            for name, value in values.items():
                if first:
                    yield from tensor_to_wire_chunks(
                        name,
                        value,
                        chunk_bytes,
                        request_id=request_id,
                        run=self._channel.run,
                        expected_version=expected_version,
                    )
                    first = False
                else:
                    yield from tensor_to_wire_chunks(name, value, chunk_bytes)

        return int(self._channel.call_stream(call, chunks).model_version)
