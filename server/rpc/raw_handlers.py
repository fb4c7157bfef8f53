"""How GradientService is registered: the generated handlers, except for the three RPCs that
carry whole parameters, whose messages are written and read by hand (gradserve.wire_messages).

- GetParameters and StreamParameters: the servicer returns the response's bytes already
  serialised, so the handler has no response serializer (gRPC sends bytes as they are).
- UploadParameters: each chunk is parsed by wire_messages.parse_chunk into a ChunkView whose
  `data` is a view of the received bytes (the assembler copies it once, into the parameter's
  buffer). Malformed chunks do not raise in the deserializer (gRPC would answer INTERNAL): the
  servicer raises their InvalidArgumentError, naming the chunk and field, when it reads them.

Everything else about the handlers (interceptors, metrics, admission) is unchanged: they wrap
whatever handler is registered and keep its (de)serializers.
"""

from __future__ import annotations

from typing import Any

import grpc

from gradserve.defaults import SERVICE_NAME
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc
from gradserve.wire_messages import parse_chunk

from .servicer import GradientServicer


def parameter_handlers(servicer: GradientServicer) -> dict[str, grpc.RpcMethodHandler]:
    return {
        "GetParameters": grpc.unary_unary_rpc_method_handler(
            servicer.GetParameters,
            request_deserializer=pb.GetParametersRequest.FromString,
        ),
        "StreamParameters": grpc.unary_stream_rpc_method_handler(
            servicer.StreamParameters,
            request_deserializer=pb.StreamParametersRequest.FromString,
        ),
        "UploadParameters": grpc.stream_unary_rpc_method_handler(
            servicer.UploadParameters,
            request_deserializer=parse_chunk,
            response_serializer=pb.UploadParametersResponse.SerializeToString,
        ),
    }


class _Collected:
    """Stands in for the server while the generated code registers its handlers, to keep them."""

    def __init__(self) -> None:
        self.handlers: dict[str, grpc.RpcMethodHandler] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        pass  # the same handlers come again as registered methods below

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers.update(handlers)


def add_gradient_service(servicer: GradientServicer, server: grpc.Server) -> None:
    """The generated add_GradientServiceServicer_to_server, with parameter_handlers in place
    of the generated three."""
    collected = _Collected()
    pb_grpc.add_GradientServiceServicer_to_server(servicer, collected)
    if set(parameter_handlers(servicer)) - set(collected.handlers):
        raise RuntimeError("the generated GradientService lacks a parameter RPC")
    handlers = {**collected.handlers, **parameter_handlers(servicer)}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
