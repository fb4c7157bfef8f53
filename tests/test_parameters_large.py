"""A parameter set over gRPC's default 4 MiB message limit round-trips both ways; its streams are
of one version; its uploads are idempotent under their request id."""

from __future__ import annotations

import pytest
import torch
from helpers import TIMEOUT, get_parameters, set_parameters

from gradserve.chunks import MIN_CHUNK_BYTES, ChunkAssembler
from gradserve.client.gradient_client import GradientClient
from gradserve.errors import InvalidArgumentError
from gradserve.v1 import gradserve_pb2 as pb

SPEC = "mlp:1024-2048-10"


def test_parameters_over_4_mib_round_trip(make_server, make_stub) -> None:
    server = make_server(model=SPEC)
    stub = make_stub(server)
    parameters = get_parameters(stub)
    size = sum(value.numel() * value.element_size() for value in parameters.values())
    assert size > 8 * 1024 * 1024
    assert server.config.limits.max_message_bytes > size

    generator = torch.Generator().manual_seed(0)
    new = {
        name: torch.randn(value.shape, generator=generator) for name, value in parameters.items()
    }
    assert set_parameters(stub, new).model_version == 1

    back = get_parameters(stub)
    assert back.keys() == new.keys()
    for name, value in new.items():
        assert torch.equal(back[name], value), name
    for name, parameter in server.store.model.module.named_parameters():
        assert torch.equal(parameter.detach(), new[name]), name
    request = pb.GetParametersRequest(names=["0.weight"])
    assert stub.GetParameters(request, timeout=10).ByteSize() > 4 * 1024 * 1024


def test_a_stream_is_of_one_version_when_an_update_lands_mid_stream(make_server) -> None:
    """The snapshot is taken before the first chunk leaves: SetParameters between two chunks
    changes nothing in the rest of the stream."""
    server = make_server(model=SPEC)
    before = {n: p.detach().clone() for n, p in server.store.model.module.named_parameters()}
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        request = pb.StreamParametersRequest(chunk_bytes=MIN_CHUNK_BYTES)
        stream = client.call_channel.stub.StreamParameters(request, timeout=TIMEOUT)
        assembler = ChunkAssembler()
        assembler.add(next(stream))
        ones = {name: torch.ones_like(value) for name, value in before.items()}
        assert client.set_parameters(ones) == 1
        for chunk in stream:
            assert chunk.model_version == 0
            assembler.add(chunk)
        streamed = dict(assembler.tensors())
        assert streamed.keys() == before.keys()
        for name, value in before.items():
            assert torch.equal(streamed[name], value), name
        assert client.stream_parameters()[1]["0.weight"].eq(1).all()


def test_an_upload_retried_with_its_request_id_is_answered_again(make_server) -> None:
    """The upload's digest, taken as its chunks arrive, stands for its values: the same
    upload again is a replay (nothing applied twice), other values under that id a refusal."""
    server = make_server(model=SPEC)
    generator = torch.Generator().manual_seed(3)
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        _, values = client.get_parameters()
        new = {name: torch.randn(v.shape, generator=generator) for name, v in values.items()}
        assert client.upload_parameters(new, request_id="upload-1") == 1
        assert client.upload_parameters(new, request_id="upload-1") == 1
        assert server.store.version == 1
        other = {name: value + 1 for name, value in new.items()}
        with pytest.raises(InvalidArgumentError, match="different payload"):
            client.upload_parameters(other, request_id="upload-1")
        version, back = client.get_parameters()
        assert version == 1
        for name, value in new.items():
            assert torch.equal(back[name], value), name
            back[name] += 1  # the client's copies are its own, writable
        assert torch.equal(client.get_parameters()[1]["0.bias"], new["0.bias"])
