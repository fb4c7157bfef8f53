"""Clients built from the proto before UploadParameters and StreamParameters had their own
messages (both used ParameterChunk; UploadParameters answered SetParametersResponse) still
work: the same bytes, read with the old message types, over a real channel."""

from __future__ import annotations

import grpc
import torch

from gradserve.codec import tensor_from_proto
from gradserve.server.app import GradientServer
from gradserve.v1 import gradserve_pb2 as pb

SERVICE = "/gradserve.v1.GradientService/"
TIMEOUT = 10


def test_an_old_client_uploads_and_streams_with_parameter_chunk(server: GradientServer) -> None:
    new_w = torch.tensor([1.25])
    with grpc.insecure_channel(server.address) as channel:
        upload = channel.stream_unary(
            SERVICE + "UploadParameters",
            request_serializer=pb.ParameterChunk.SerializeToString,
            response_deserializer=pb.SetParametersResponse.FromString,
        )
        chunk = pb.ParameterChunk(
            name="w", dtype=pb.DATA_TYPE_FLOAT32, shape=[1], data=new_w.numpy().tobytes(),
            request_id="old-client-upload", expected_version=0,
        )  # fmt: skip
        answer = upload(iter([chunk]), timeout=TIMEOUT)
        assert answer.model_version == 1

        stream = channel.unary_stream(
            SERVICE + "StreamParameters",
            request_serializer=pb.StreamParametersRequest.SerializeToString,
            response_deserializer=pb.ParameterChunk.FromString,
        )
        chunks = list(stream(pb.StreamParametersRequest(names=["w"]), timeout=TIMEOUT))
    assert [(c.name, c.offset, c.model_version) for c in chunks] == [("w", 0, 1)]
    tensor = pb.Tensor(name="w", dtype=chunks[0].dtype, shape=chunks[0].shape, data=chunks[0].data)
    assert torch.equal(tensor_from_proto(tensor, "w"), new_w)
    assert torch.equal(server.store.model.module.state_dict()["w"], new_w)
