"""A parameter set over gRPC's default 4 MiB message limit round-trips both ways."""

from __future__ import annotations

import torch
from helpers import get_parameters, set_parameters

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
