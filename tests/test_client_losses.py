"""Client-computed losses (ComputeOutputs / BackwardOutputs, compute_gradients_with) against
local torch: exact through dropout and batch norm, trained like local torch with losses no
server-side name offers, and the handles' bounds, expiry, staleness and replays."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
import torch

from gradserve.client.gradient_client import GradientClient
from gradserve.codec import tensor_to_proto
from gradserve.errors import FailedPreconditionError, InvalidArgumentError, ResourceExhaustedError
from gradserve.server.models.specs import build
from gradserve.server.store.output_handles import HandleBounds, OutputHandles
from gradserve.v1 import gradserve_pb2 as pb
from tests.conftest import ServerFactory
from tests.helpers import TIMEOUT, Snapshot, field_violations


def data(seed: int, n: int = 8, features: int = 4, outputs: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randn(n, outputs, generator=g)


def mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return ((outputs - targets) ** 2).mean()


def pinball(outputs: torch.Tensor, targets: torch.Tensor, tau: float = 0.9) -> torch.Tensor:
    error = targets - outputs
    return torch.maximum(tau * error, (tau - 1) * error).mean()


def spread(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A loss across the whole batch: match the targets' pairwise differences."""
    return ((outputs - outputs.T) - (targets - targets.T)).abs().mean()


def test_client_computed_mse_equals_the_server_side_mse_bitwise(make_server: ServerFactory):
    server = make_server(model="mlp:4-8-1", loss="mse")
    x, y = data(0)
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        served = client.compute_gradients(x, y)
        server_side = server.store.gradients()
        client.discard_gradients()
        computed = client.compute_gradients_with(mse, x, y)
        client_side = server.store.gradients()
    assert computed.loss == served.loss
    assert (computed.accumulated_batches, computed.accumulated_samples) == (1, 8)
    for name, value in server_side.items():
        assert torch.equal(client_side[name], value), name


@pytest.mark.parametrize("loss_fn", [pinball, spread])
def test_losses_no_name_offers_train_to_the_parameters_of_local_torch(
    make_server: ServerFactory, loss_fn
):
    spec = "mlp:4-8-1:tanh"
    # sgd:momentum=0 is bitwise torch.optim.SGD (plain "sgd" is the seed's arithmetic).
    server = make_server(model=spec, loss="mse", optimizer="sgd:momentum=0")
    local = build(spec, "mse", 0).module
    optimizer = torch.optim.SGD(local.parameters(), lr=0.05)
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        for step in range(5):
            x, y = data(step)
            result = client.compute_gradients_with(loss_fn, x, y)
            client.apply_update(0.05)
            optimizer.zero_grad()
            loss = loss_fn(local(x), y)
            loss.backward()
            optimizer.step()
            assert result.loss == loss.item()
        _, served = client.get_parameters()
    for name, value in local.named_parameters():
        assert torch.equal(served[name], value.detach()), name


def test_dropout_and_batch_norm_are_exact_even_when_passes_interleave(
    make_server: ServerFactory,
):
    spec = "mlp:4-16-3:dropout=0.5:batchnorm"
    server = make_server(model=spec, loss="mse")
    local = build(spec, "mse", 0).module
    local.train()
    parameters = list(local.parameters())
    batches = [data(seed, outputs=3) for seed in (1, 2)]
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        kept, expected = [], []
        for seed, (x, _) in zip((11, 12), batches, strict=True):
            # The server runs in this process: the same seed gives it the same dropout masks.
            torch.manual_seed(seed)
            kept.append(client.compute_outputs(x))
            torch.manual_seed(seed)
            expected.append(local(x))
            assert torch.equal(kept[-1].outputs, expected[-1].detach())
        buffers = dict(local.named_buffers())
        for name, value in server.store.model.module.named_buffers():
            assert torch.equal(value, buffers[name]), name
        # Backward in the other order: each through its own pass (its own masks, statistics).
        for index in (1, 0):
            (x, y) = batches[index]
            seed = torch.autograd.grad(mse(expected[index], y), expected[index], retain_graph=True)
            client.backward_outputs(kept[index].handle, seed[0], 0.0)
        total = [torch.zeros_like(p) for p in parameters]
        for index in (1, 0):
            grads = torch.autograd.grad(mse(expected[index], batches[index][1]), parameters)
            total = [t + g for t, g in zip(total, grads, strict=True)]
    served = server.store.gradients()
    for (name, _), value in zip(local.named_parameters(), total, strict=True):
        assert torch.equal(served[name], value), name


def backward_request(handle: str, gradients: torch.Tensor, **fields) -> pb.BackwardOutputsRequest:
    return pb.BackwardOutputsRequest(
        handle=handle, output_gradients=tensor_to_proto(gradients), **fields
    )


def test_a_handle_is_used_up_and_a_retry_replays(make_server: ServerFactory, make_stub):
    server = make_server(model="mlp:4-8-1", loss="mse")
    stub = make_stub(server)
    x, _ = data(3)
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        kept = client.compute_outputs(x, request_id="outputs-1")
        again = client.compute_outputs(x, request_id="outputs-1")
        assert again.handle == kept.handle and torch.equal(again.outputs, kept.outputs)
        request = backward_request(kept.handle, torch.ones(8, 1), loss=1.5, request_id="b-1")
        first = stub.BackwardOutputs(request, timeout=TIMEOUT)
        before = Snapshot.take(server, stub)
        assert stub.BackwardOutputs(request, timeout=TIMEOUT) == first
        Snapshot.take(server, stub).assert_same(before)
        assert (first.loss, first.accumulated_batches, first.batch_size) == (1.5, 1, 8)
        with pytest.raises(FailedPreconditionError) as raised:
            client.backward_outputs(kept.handle, torch.ones(8, 1), 1.5)
        assert raised.value.field == "handle" and raised.value.reason == "HANDLE_NOT_FOUND"
        Snapshot.take(server, stub).assert_same(before)


BAD = [
    (torch.ones(7, 1), 0.0, "output_gradients.shape"),
    (torch.ones(8, 1, dtype=torch.float64), 0.0, "output_gradients.dtype"),
    (torch.full((8, 1), float("nan")), 0.0, "output_gradients.data"),
    (torch.ones(8, 1), float("inf"), "loss"),
]


@pytest.mark.parametrize(("gradients", "loss", "field"), BAD)
def test_bad_output_gradients_change_nothing_and_keep_the_handle(
    make_server: ServerFactory, make_stub, gradients, loss, field
):
    server = make_server(model="mlp:4-8-1", loss="mse")
    stub = make_stub(server)
    x, _ = data(4)
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        kept = client.compute_outputs(x)
        before = Snapshot.take(server, stub)
        with pytest.raises(grpc.RpcError) as raised:
            stub.BackwardOutputs(
                backward_request(kept.handle, gradients, loss=loss), timeout=TIMEOUT
            )
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(raised.value) == [field]
        Snapshot.take(server, stub).assert_same(before)
        assert client.backward_outputs(kept.handle, torch.ones(8, 1), 0.0).accumulated_batches == 1


def test_an_update_or_new_parameters_make_handles_stale(make_server: ServerFactory):
    server = make_server(model="mlp:4-8-1", loss="mse")
    x, y = data(5)
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        kept = client.compute_outputs(x)
        client.compute_gradients(x, y)
        client.apply_update(0.1)
        with pytest.raises(FailedPreconditionError) as raised:
            client.backward_outputs(kept.handle, torch.ones(8, 1), 0.0)
        assert raised.value.field == "handle" and raised.value.reason == "HANDLE_STALE"
        kept = client.compute_outputs(x)
        _, values = client.get_parameters()
        client.set_parameters(values)
        with pytest.raises(FailedPreconditionError) as raised:
            client.backward_outputs(kept.handle, torch.ones(8, 1), 0.0)
        assert raised.value.reason == "HANDLE_STALE"
        assert client.model_info().accumulated_batches == 0


def test_handles_are_bounded_in_count_and_bytes(make_server: ServerFactory):
    server = make_server(model="mlp:4-8-1:batchnorm", loss="mse", output_handles=2)
    x, _ = data(6)
    module = server.store.model.module
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        first, _ = client.compute_outputs(x), client.compute_outputs(x)
        statistics = {name: value.clone() for name, value in module.named_buffers()}
        with pytest.raises(ResourceExhaustedError) as raised:
            client.compute_outputs(x)
        assert raised.value.field == "handle"
        for name, value in module.named_buffers():
            assert torch.equal(value, statistics[name]), name
        client.backward_outputs(first.handle, torch.ones(8, 1), 0.0)
        client.compute_outputs(x)
    small = make_server(model="mlp:4-8-1", loss="mse", output_handle_bytes=256)
    with GradientClient(small.address, timeout=TIMEOUT) as client:
        with pytest.raises(ResourceExhaustedError) as raised:
            client.compute_outputs(torch.randn(64, 4))
        assert raised.value.field == "inputs"
        client.compute_outputs(torch.randn(2, 4))


def test_a_handle_expires_after_the_servers_expiry(make_server: ServerFactory, make_stub):
    server = make_server(model="mlp:4-8-1", loss="mse", output_handle_seconds=0.2)
    stub = make_stub(server)
    x, _ = data(7)
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        kept = client.compute_outputs(x)
        assert 0 < kept.expires_in_seconds <= 0.2
        # Wait on the condition (the expiry time has passed), polling with a deadline.
        deadline, expires = time.monotonic() + TIMEOUT, time.monotonic() + kept.expires_in_seconds
        waiter = threading.Event()
        while time.monotonic() <= expires and time.monotonic() < deadline:
            waiter.wait(0.01)
        before = Snapshot.take(server, stub)
        with pytest.raises(FailedPreconditionError) as raised:
            client.backward_outputs(kept.handle, torch.ones(8, 1), 0.0)
        assert raised.value.field == "handle"
        Snapshot.take(server, stub).assert_same(before)


def test_the_handle_table_on_a_clock_it_is_given():
    now = [100.0]
    handles = OutputHandles(clock=lambda: now[0])
    bounds = HandleBounds(count=2, bytes=1 << 20, seconds=5.0)
    handle = handles.keep(torch.zeros(3), 0, 3, 0, bounds)
    assert handles.expires_in(handles.peek(handle, 0)) == 5.0
    now[0] = 104.9
    assert handles.peek(handle, 0).batch_size == 3
    now[0] = 105.0
    with pytest.raises(FailedPreconditionError):
        handles.peek(handle, 0)
    assert len(handles) == 0
    for _ in range(2):
        handles.keep(torch.zeros(3), 0, 3, 0, bounds)
    with pytest.raises(ResourceExhaustedError):
        handles.check_room(0, bounds)
    handles.check_room(1, bounds)  # a new version: the old passes are stale and dropped
    assert len(handles) == 0


def test_async_staleness_and_sync_rounds_count_backward_outputs(make_server: ServerFactory):
    x, y = data(8)
    strict = make_server(model="mlp:4-8-1", loss="mse", mode="async", max_staleness=0)
    with GradientClient(strict.address, timeout=TIMEOUT) as client:
        kept = client.compute_outputs(x)
        with pytest.raises(InvalidArgumentError) as raised:
            client.backward_outputs(kept.handle, torch.ones(8, 1), 0.0, based_on_version=3)
        assert raised.value.field == "based_on_version"
        client.backward_outputs(kept.handle, torch.ones(8, 1), 0.0, based_on_version=0)
    rounds = make_server(model="mlp:4-8-1", loss="mse", mode="sync", sync_contributions=1)
    with GradientClient(rounds.address, timeout=TIMEOUT) as client:
        client.compute_gradients_with(mse, x, y)
        update = client.apply_update(0.1)
        assert (update.model_version, update.applied_batches) == (1, 1)
