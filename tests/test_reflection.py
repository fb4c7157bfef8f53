"""Generic tools (grpcurl, Postman, grpcui) see the contract through server reflection.

The client side here uses no generated gradserve code: descriptors come only from the server
(grpc.reflection.v1alpha) into an empty DescriptorPool, and a call is made with message classes
built from them at run time, as a generic tool would.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from gradserve.server.app import GradientServer

SERVICE = "gradserve.v1.GradientService"


@pytest.fixture
def channel(server: GradientServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture
def pool(channel: grpc.Channel) -> descriptor_pool.DescriptorPool:
    # Backed by the server alone: nothing registered in this process's default pool leaks in.
    return descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(channel))


def test_lists_the_services(channel: grpc.Channel) -> None:
    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= (
        services
    )


def test_describes_the_gradient_service(pool: descriptor_pool.DescriptorPool) -> None:
    service = pool.FindServiceByName(SERVICE)
    assert service.file.name == "gradserve/v1/gradserve.proto"
    methods = {m.name: m for m in service.methods}
    assert {
        "ComputeGradients",
        "ApplyUpdate",
        "Evaluate",
        "GetParameters",
        "SetParameters",
        "GetModelInfo",
        "DiscardGradients",
    } <= set(methods)
    compute = methods["ComputeGradients"]
    assert compute.input_type.full_name == "gradserve.v1.ComputeGradientsRequest"
    assert compute.output_type.full_name == "gradserve.v1.ComputeGradientsResponse"
    assert not compute.client_streaming and not compute.server_streaming
    tensor = pool.FindMessageTypeByName("gradserve.v1.Tensor")
    assert [(f.name, f.number) for f in tensor.fields] == [
        ("name", 1),
        ("dtype", 2),
        ("shape", 3),
        ("data", 4),
    ]
    data_type = pool.FindEnumTypeByName("gradserve.v1.DataType")
    assert data_type.values_by_name["DATA_TYPE_BFLOAT16"].number == 4


def test_calls_an_rpc_with_reflected_types(
    channel: grpc.Channel, pool: descriptor_pool.DescriptorPool
) -> None:
    method = pool.FindServiceByName(SERVICE).methods_by_name["GetModelInfo"]
    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    call = channel.unary_unary(
        f"/{SERVICE}/GetModelInfo",
        request_serializer=request_class.SerializeToString,
        response_deserializer=response_class.FromString,
    )
    info = call(request_class(), timeout=10)
    assert info.model == "linear"
    assert [p.name for p in info.parameters] == ["w", "b"]
    assert info.max_message_bytes == 64 * 1024 * 1024


def v1_reflection(channel: grpc.Channel, request: reflection_pb2.ServerReflectionRequest):
    """One request to grpc.reflection.v1 (the path grpcurl tries first); v1's messages are
    wire-identical to v1alpha's, so v1alpha's classes encode and decode them."""
    call = channel.stream_stream(
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    (response,) = list(call(iter([request]), timeout=10))
    return response


def test_v1_reflection_is_served(channel: grpc.Channel) -> None:
    listed = v1_reflection(channel, reflection_pb2.ServerReflectionRequest(list_services=""))
    services = {service.name for service in listed.list_services_response.service}
    assert {
        SERVICE,
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= services

    for symbol, file_name in (
        (SERVICE, "gradserve/v1/gradserve.proto"),
        ("grpc.reflection.v1.ServerReflection", "grpc/reflection/v1/reflection.proto"),
    ):
        found = v1_reflection(
            channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
        )
        assert found.WhichOneof("message_response") == "file_descriptor_response", found
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(raw)
            for raw in found.file_descriptor_response.file_descriptor_proto
        ]
        assert file_name in {file.name for file in files}
