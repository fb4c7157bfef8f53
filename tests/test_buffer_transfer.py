"""Buffers (batch norm's running statistics) are transferable model state: GetModelInfo lists
them, GetParameters/StreamParameters return them with include_buffers, SetParameters and
UploadParameters take them by name, all or nothing, and bad values change nothing."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
import torch

from gradserve.client.gradient_client import GradientClient
from gradserve.codec import tensor_from_proto
from gradserve.errors import InvalidArgumentError
from gradserve.server.app import GradientServer
from gradserve.v1 import gradserve_pb2 as pb
from tests.conftest import ServerFactory
from tests.helpers import TIMEOUT, Snapshot, field_violations, set_parameters

SPEC = "mlp:3-4-3:tanh:batchnorm"
PARAMETERS = ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias"]
BUFFERS = ["1.running_mean", "1.running_var", "1.num_batches_tracked"]
INPUTS = torch.randn(16, 3, generator=torch.Generator().manual_seed(7))


@pytest.fixture
def trained(make_server: ServerFactory) -> Iterator[tuple[GradientServer, GradientClient]]:
    """Server A after a few training steps: parameters and running statistics moved."""
    server = make_server(model=SPEC)
    generator = torch.Generator().manual_seed(0)
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        for _ in range(3):
            x = torch.randn(8, 3, generator=generator) * 3 + 1
            client.compute_gradients(x, torch.randint(0, 3, (8,), generator=generator))
            client.apply_update(0.1)
        yield server, client


def predictions(client: GradientClient) -> torch.Tensor:
    result = client.evaluate(INPUTS, return_predictions=True)
    assert result.predictions is not None
    return result.predictions


def live_state(server: GradientServer) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in server.store.model.module.state_dict().items()}


def test_model_info_lists_the_buffers_in_the_models_order(trained) -> None:
    server, client = trained
    info = client.model_info()
    assert [spec.name for spec in info.buffers] == BUFFERS
    module_buffers = dict(server.store.model.module.named_buffers())
    for spec in info.buffers:
        buffer = module_buffers[spec.name]
        assert (spec.dtype, spec.shape) == (buffer.dtype, tuple(buffer.shape))
    assert info.buffers[2].dtype == torch.int64 and info.buffers[2].shape == ()
    assert [spec.name for spec in info.parameters] == PARAMETERS


def test_get_parameters_returns_buffers_only_when_asked(trained) -> None:
    server, client = trained
    _, plain = client.get_parameters()
    assert list(plain) == PARAMETERS
    _, both = client.get_parameters(include_buffers=True)
    assert list(both) == PARAMETERS + BUFFERS
    state = live_state(server)
    for name, value in both.items():
        assert value.dtype == state[name].dtype and torch.equal(value, state[name]), name
    assert int(both["1.num_batches_tracked"]) == 3
    _, named = client.get_parameters(["1.running_var", "0.bias"])
    assert list(named) == ["1.running_var", "0.bias"]
    _, streamed = client.stream_parameters(include_buffers=True)
    assert list(streamed) == PARAMETERS + BUFFERS
    assert all(torch.equal(streamed[name], both[name]) for name in both)
    assert list(client.stream_parameters()[1]) == PARAMETERS


def copy_parameters_then_buffers(source: GradientClient, target: GradientClient, stream: bool):
    """Parameters alone do not reproduce the evaluation; parameters and buffers do, bitwise."""
    expected = predictions(source)
    read = source.stream_parameters if stream else source.get_parameters
    write = target.upload_parameters if stream else target.set_parameters
    _, parameters = read()
    write(parameters)
    assert not torch.equal(predictions(target), expected)
    _, everything = read(include_buffers=True)
    version = write(everything)
    assert version == 2
    assert torch.equal(predictions(target), expected)


@pytest.mark.parametrize("stream", [False, True], ids=["unary", "stream"])
def test_copying_buffers_reproduces_the_evaluation_bitwise(
    trained, make_server: ServerFactory, stream: bool
) -> None:
    source_server, source = trained
    target_server = make_server(model=SPEC)
    with GradientClient(target_server.address, timeout=TIMEOUT) as target:
        copy_parameters_then_buffers(source, target, stream)
    assert live_state(target_server).keys() == live_state(source_server).keys()
    for name, value in live_state(source_server).items():
        assert torch.equal(live_state(target_server)[name], value), name


def bad_values() -> list[tuple[str, torch.Tensor, str]]:
    return [
        ("1.running_mean", torch.zeros(5), "parameters[1].shape"),
        ("1.running_var", torch.tensor([1.0, float("nan"), 1.0, 1.0]), "parameters[1].data"),
        ("1.running_mean", torch.tensor([0.0, float("inf"), 0.0, 0.0]), "parameters[1].data"),
        ("1.num_batches_tracked", torch.tensor(-1), "parameters[1].data"),
        ("1.num_batches_tracked", torch.tensor(2.0), "parameters[1].dtype"),
        ("1.running_average", torch.zeros(4), "parameters[1].name"),
    ]


@pytest.mark.parametrize(("name", "value", "field"), bad_values())
def test_a_bad_buffer_is_refused_naming_the_field_and_changes_nothing(
    trained, make_stub, name: str, value: torch.Tensor, field: str
) -> None:
    server, _ = trained
    stub = make_stub(server)
    before, state = Snapshot.take(server, stub), live_state(server)
    # A good parameter beside the bad buffer: all or nothing.
    good = {"0.bias": torch.full((4,), 0.5), name: value}
    with pytest.raises(grpc.RpcError) as raised:
        set_parameters(stub, good)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details().startswith(field)
    assert field_violations(raised.value) == [field]
    Snapshot.take(server, stub).assert_same(before)
    for key, saved in live_state(server).items():
        assert torch.equal(saved, state[key]), key


def test_a_bad_buffer_in_an_upload_changes_nothing(trained) -> None:
    server, client = trained
    state = live_state(server)
    version = client.model_info().model_version
    bad = {"1.running_var": torch.full((4,), float("nan")), "0.bias": torch.zeros(4)}
    with pytest.raises(InvalidArgumentError) as raised:
        client.upload_parameters(bad)
    assert raised.value.field == "parameters[0].data"
    assert client.model_info().model_version == version
    for key, saved in live_state(server).items():
        assert torch.equal(saved, state[key]), key


def test_setting_buffers_bumps_the_version_and_drops_gradients(trained) -> None:
    server, client = trained
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    client.compute_gradients(x, y)
    version = client.model_info().model_version
    statistics = {"1.running_mean": torch.arange(4.0), "1.num_batches_tracked": torch.tensor(9)}
    assert client.set_parameters(statistics, request_id="set-buffers") == version + 1
    info = client.model_info()
    assert (info.model_version, info.accumulated_batches) == (version + 1, 0)
    assert all(gradient is None for gradient in server.store.gradients().values())
    _, now = client.get_parameters(list(statistics))
    assert all(torch.equal(now[name], value) for name, value in statistics.items())
    # The request id's fingerprint covers buffer values: a replay is answered, not re-applied;
    # the same id with other values is refused.
    assert client.set_parameters(statistics, request_id="set-buffers") == version + 1
    changed = {**statistics, "1.num_batches_tracked": torch.tensor(10)}
    with pytest.raises(InvalidArgumentError) as raised:
        client.set_parameters(changed, request_id="set-buffers")
    assert raised.value.field == "request_id"
    assert client.model_info().model_version == version + 1


def test_the_size_check_counts_the_buffers(make_server: ServerFactory, make_stub) -> None:
    # 3000 hidden units: the parameters (about 60 KB) fit in 64 KiB, with buffers they do not.
    server = make_server(model="mlp:1-3000-1:batchnorm", loss="mse", max_message_bytes=64 * 1024)
    stub = make_stub(server)
    response = stub.GetParameters(pb.GetParametersRequest(), timeout=TIMEOUT)
    assert [tensor.name for tensor in response.parameters][-1] == "3.bias"
    with pytest.raises(grpc.RpcError) as raised:
        stub.GetParameters(pb.GetParametersRequest(include_buffers=True), timeout=TIMEOUT)
    assert raised.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert field_violations(raised.value) == ["names"]
    request = pb.StreamParametersRequest(include_buffers=True)
    chunks = list(stub.StreamParameters(request, timeout=TIMEOUT))
    names = [chunk.name for chunk in chunks if chunk.name]
    assert names[-3:] == BUFFERS
    last = pb.Tensor(name=chunks[-1].name, dtype=chunks[-1].dtype, data=chunks[-1].data)
    assert tensor_from_proto(last).dtype == torch.int64 and int(tensor_from_proto(last)) == 0
