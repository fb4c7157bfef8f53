"""GradientClient against real servers: every RPC, torch as the oracle, errors, deadlines, retries."""

from __future__ import annotations

import socket

import grpc
import pytest
import torch
from helpers import linear_batch
from proxy import FaultyProxy

from gradserve.client.gradient_client import (
    NO_RETRY,
    GradientClient,
    Reduction,
    RetryPolicy,
    TrainStep,
)
from gradserve.errors import (
    FailedPreconditionError,
    GradserveError,
    InvalidArgumentError,
    UnavailableError,
    VersionConflictError,
)
from gradserve.server.app import GradientServer

TIMEOUT = 10.0
# Retries in the tests back off for milliseconds, not seconds.
FAST_RETRY = RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.01)


@pytest.fixture
def client(server: GradientServer):
    with GradientClient(server.address, timeout=TIMEOUT) as connected:
        yield connected


def local_step(
    parameters: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor]]:
    """The seed's forward and backward on copies of the parameters: (loss, gradients)."""
    w = parameters["w"].clone().requires_grad_(True)
    b = parameters["b"].clone().requires_grad_(True)
    loss = ((w * inputs + b - targets) ** 2).mean()
    loss.backward()
    return loss.item(), {"w": w.grad, "b": b.grad}


def batches(count: int, size: int = 10, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [linear_batch(size, generator) for _ in range(count)]


def closed_port() -> int:
    # Bound then closed: nothing listens there (another process could take it in between;
    # on loopback in a test run that is unlikely and would show up as a different error).
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# -- every RPC ----------------------------------------------------------------------------


def test_wait_until_ready_and_model_info(client: GradientClient) -> None:
    client.wait_until_ready(timeout=5.0)
    info = client.model_info()
    assert (info.model, info.loss, info.optimizer) == ("linear", "mse", "sgd")
    assert {(p.name, p.dtype, p.shape) for p in info.parameters} == {
        ("w", torch.float32, (1,)),
        ("b", torch.float32, (1,)),
    }
    assert info.parameter_count == 2
    assert (info.input.dtype, info.input.shape) == (torch.float32, (-1, 1))
    assert (info.target.dtype, info.target.shape) == (torch.float32, (-1, 1))
    assert (info.model_version, info.accumulated_batches, info.accumulated_samples) == (0, 0, 0)
    assert info.max_message_bytes > 0
    assert info.max_batch_elements > 0


def test_wait_until_ready_gives_up_on_a_closed_port() -> None:
    with (
        GradientClient(f"127.0.0.1:{closed_port()}", timeout=1.0) as nowhere,
        pytest.raises(UnavailableError, match="not ready after"),
    ):
        nowhere.wait_until_ready(timeout=0.3)


def test_compute_gradients_returns_torch_gradients(client: GradientClient) -> None:
    _, parameters = client.get_parameters()
    (x, y), (x2, y2) = batches(2)
    first = client.compute_gradients(x, y, return_gradients=True)
    loss, gradients = local_step(parameters, x, y)
    assert first.loss == loss
    assert (first.batch_size, first.accumulated_batches, first.accumulated_samples) == (10, 1, 10)
    assert first.model_version == 0
    assert first.gradients.keys() == {"w", "b"}
    for name, gradient in gradients.items():
        assert torch.equal(first.gradients[name], gradient), name

    second = client.compute_gradients(x2[:7], y2[:7])
    assert second.gradients == {}  # not asked for
    assert (second.batch_size, second.accumulated_batches, second.accumulated_samples) == (7, 2, 17)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_apply_update_matches_local_sgd(client: GradientClient, reduction: str) -> None:
    _, parameters = client.get_parameters()
    accumulated = {name: torch.zeros_like(value) for name, value in parameters.items()}
    for x, y in batches(3):
        client.compute_gradients(x, y)
        _, gradients = local_step(parameters, x, y)
        for name in accumulated:
            accumulated[name] += gradients[name]
    update = client.apply_update(0.1, reduction=reduction, expected_version=0)
    assert (update.model_version, update.applied_batches, update.applied_samples) == (1, 3, 30)
    if reduction == "mean":
        accumulated = {name: gradient / 3 for name, gradient in accumulated.items()}
    norm = sum(float((g.double() ** 2).sum()) for g in accumulated.values()) ** 0.5
    assert update.gradient_norm == pytest.approx(norm, rel=1e-12)

    version, after = client.get_parameters()
    assert version == 1
    for name, value in parameters.items():
        expected = value.clone()
        expected -= 0.1 * accumulated[name]
        assert torch.equal(after[name], expected), name
    assert client.model_info().accumulated_batches == 0


@pytest.mark.parametrize("reduction", ["Mean", "avg", "mena", ""])
def test_an_unknown_reduction_is_an_error_not_a_sum(client: GradientClient, reduction: str) -> None:
    # A typo once trained silently with SUM; now nothing is sent and nothing changes.
    x, y = linear_batch(4)
    client.compute_gradients(x, y)
    with pytest.raises(ValueError, match="reduction"):
        client.apply_update(0.1, reduction=reduction)
    with pytest.raises(ValueError, match="reduction"):
        TrainStep.of([(x, y)], 0.1, reduction)
    info = client.model_info()
    assert (info.model_version, info.accumulated_batches) == (0, 1)


def test_reductions_accept_the_enum_and_its_names(client: GradientClient) -> None:
    x, y = linear_batch(4)
    for reduction in (Reduction.MEAN, "mean", Reduction.SUM, "sum"):
        client.compute_gradients(x, y)
        client.compute_gradients(x, y)
        assert client.apply_update(0.0, reduction=reduction).applied_batches == 2


def test_evaluate_with_and_without_targets(client: GradientClient) -> None:
    _, parameters = client.get_parameters()
    x, y = batches(1)[0]
    predictions = parameters["w"] * x + parameters["b"]

    scored = client.evaluate(x, y, return_predictions=True)
    assert scored.loss == ((predictions - y) ** 2).mean().item()
    assert scored.batch_size == 10
    assert scored.model_version == 0
    assert scored.predictions is not None
    assert torch.equal(scored.predictions, predictions)

    unscored = client.evaluate(x)
    assert unscored.loss is None
    assert unscored.predictions is None
    # Evaluation changes nothing.
    assert client.model_info().accumulated_batches == 0


def test_set_and_get_parameters(client: GradientClient) -> None:
    version = client.set_parameters({"w": torch.tensor([3.5]), "b": torch.tensor([-0.25])})
    assert version == 1
    assert client.get_parameters() == (1, {"w": torch.tensor([3.5]), "b": torch.tensor([-0.25])})
    only_b = client.get_parameters(["b"])
    assert only_b[0] == 1
    assert list(only_b[1]) == ["b"]
    assert client.set_parameters({"b": torch.tensor([1.0])}, expected_version=1) == 2
    assert torch.equal(client.get_parameters(["b"])[1]["b"], torch.tensor([1.0]))


def test_discard_gradients(client: GradientClient) -> None:
    for x, y in batches(2):
        client.compute_gradients(x, y)
    assert client.discard_gradients() == 2
    assert client.model_info().accumulated_batches == 0
    assert client.discard_gradients() == 0
    with pytest.raises(FailedPreconditionError) as caught:
        client.apply_update(0.1)
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert client.get_parameters()[0] == 0


# -- errors keep their status code and field ----------------------------------------------


def test_wrong_input_shape_is_invalid_argument_with_field(client: GradientClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.compute_gradients(torch.rand(4, 2), torch.rand(4, 1))
    assert caught.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.field == "inputs.shape"
    assert "inputs.shape" in str(caught.value)
    assert client.model_info().accumulated_batches == 0


def test_unknown_parameter_name_is_invalid_argument(client: GradientClient) -> None:
    with pytest.raises(InvalidArgumentError) as caught:
        client.get_parameters(["nope"])
    assert caught.value.field == "names[0]"


def test_version_conflict(client: GradientClient) -> None:
    x, y = batches(1)[0]
    client.compute_gradients(x, y)
    _, before = client.get_parameters()
    with pytest.raises(VersionConflictError) as caught:
        client.apply_update(0.1, expected_version=7)
    assert caught.value.code is grpc.StatusCode.ABORTED
    assert caught.value.field == "expected_version"
    # Nothing applied: same version, same parameters, the batch still accumulated.
    version, after = client.get_parameters()
    assert version == 0
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert client.model_info().accumulated_batches == 1
    with pytest.raises(VersionConflictError):
        client.set_parameters({"w": torch.tensor([1.0])}, expected_version=3)


def test_deadline_exceeded_on_a_blocked_server(server: GradientServer) -> None:
    # Holding the store's lock blocks every call that reads the model; the client's own
    # deadline must end the call, and it leaves as a GradserveError that keeps the code.
    with GradientClient(server.address, timeout=0.2, retry=FAST_RETRY) as impatient:
        impatient.wait_until_ready(timeout=5.0)
        acquired = server.store._lock.acquire(timeout=TIMEOUT)
        assert acquired
        try:
            with pytest.raises(GradserveError) as caught:
                impatient.model_info()
        finally:
            server.store._lock.release()
        assert caught.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        # Once released, the same client works again.
        assert impatient.model_info().model == "linear"


# -- retries with request ids --------------------------------------------------------------


def run_steps(client: GradientClient) -> list[tuple[int, int, int]]:
    """Two training steps of two batches each; returns what each call reported."""
    seen = []
    for step in range(2):
        for x, y in batches(2, seed=step):
            result = client.compute_gradients(x, y)
            seen.append((result.accumulated_batches, result.accumulated_samples, 0))
        update = client.apply_update(0.05, reduction="mean")
        seen.append((update.applied_batches, update.applied_samples, update.model_version))
    return seen


def replayed(server: GradientServer, method: str) -> float:
    value = server.metrics.registry.get_sample_value(
        "gradserve_replayed_requests_total", {"grpc_method": method}
    )
    return value or 0.0


def test_retry_after_a_lost_answer_applies_nothing_twice(make_server) -> None:
    clean_server, faulty_server = make_server(), make_server()
    with GradientClient(clean_server.address, timeout=TIMEOUT) as clean:
        expected = run_steps(clean)
        expected_state = clean.get_parameters()

    # The first ComputeGradients and the first ApplyUpdate reach the server and run there,
    # but the client is told UNAVAILABLE and sends them again with the same request_id.
    with (
        FaultyProxy(faulty_server.address, drop_calls={1}) as proxy,
        GradientClient(proxy.address, timeout=TIMEOUT, retry=FAST_RETRY) as retried,
    ):
        seen = run_steps(retried)
        state = retried.get_parameters()
    assert [(d.method, d.call, d.forwarded) for d in proxy.dropped] == [
        ("ComputeGradients", 1, True),
        ("ApplyUpdate", 1, True),
    ]
    assert proxy.calls["ComputeGradients"] == 5  # 4 batches + 1 retry
    assert proxy.calls["ApplyUpdate"] == 3  # 2 updates + 1 retry
    assert seen == expected
    assert state[0] == expected_state[0] == 2
    for name, value in expected_state[1].items():
        assert torch.equal(state[1][name], value), name
    assert replayed(faulty_server, "ComputeGradients") == 1
    assert replayed(faulty_server, "ApplyUpdate") == 1
    assert replayed(clean_server, "ComputeGradients") == 0


def test_without_retry_the_lost_answer_is_an_error_but_was_applied(server: GradientServer) -> None:
    # The fault is real: the server ran the call the client was told failed.
    with (
        FaultyProxy(server.address, drop_calls={1}) as proxy,
        GradientClient(proxy.address, timeout=TIMEOUT, retry=NO_RETRY) as once,
    ):
        x, y = batches(1)[0]
        with pytest.raises(UnavailableError) as caught:
            once.compute_gradients(x, y, request_id="batch-1")
        assert caught.value.code is grpc.StatusCode.UNAVAILABLE
        assert once.model_info().accumulated_batches == 1
        # Sent again by hand with the same id: answered from the window, not run again.
        again = once.compute_gradients(x, y, request_id="batch-1")
        assert (again.accumulated_batches, again.accumulated_samples) == (1, 10)
        assert once.model_info().accumulated_batches == 1
    assert replayed(server, "ComputeGradients") == 1


def test_proxy_passes_errors_with_their_field(server: GradientServer) -> None:
    with (
        FaultyProxy(server.address) as proxy,
        GradientClient(proxy.address, timeout=TIMEOUT) as through,
        pytest.raises(InvalidArgumentError) as caught,
    ):
        through.compute_gradients(torch.rand(3, 2), torch.rand(3, 1))
    assert caught.value.field == "inputs.shape"
    assert proxy.dropped == []


def test_proxy_fraction_is_reproducible_from_its_seed(server: GradientServer) -> None:
    def dropped_calls(seed: int) -> list[int]:
        with (
            FaultyProxy(
                server.address, drop_fraction=0.3, seed=seed, code=grpc.StatusCode.INTERNAL
            ) as proxy,
            GradientClient(proxy.address, timeout=TIMEOUT, retry=NO_RETRY) as through,
        ):
            x, y = batches(1)[0]
            for _ in range(20):
                try:
                    through.compute_gradients(x, y)
                except GradserveError as error:
                    assert error.code is grpc.StatusCode.INTERNAL
            through.discard_gradients()
        return [d.call for d in proxy.dropped]

    first = dropped_calls(seed=5)
    assert first == dropped_calls(seed=5)
    assert 0 < len(first) < 20


def test_proxy_passes_streams_through(make_server) -> None:
    # Streaming calls are forwarded whole (never dropped): the same answers as direct calls.
    direct_server, proxied_server = make_server(), make_server()
    values = {"w": torch.tensor([1.5]), "b": torch.tensor([0.25])}
    with (
        FaultyProxy(proxied_server.address, drop_calls={1}) as proxy,
        GradientClient(proxy.address, timeout=TIMEOUT, retry=NO_RETRY) as through,
        GradientClient(direct_server.address, timeout=TIMEOUT) as direct,
    ):
        assert through.upload_parameters(values, chunk_bytes=4) == 1  # client stream
        assert through.stream_parameters(chunk_bytes=4) == (1, values)  # server stream
        direct.set_parameters(values)
        steps = [TrainStep.of(batches(2, seed=seed), learning_rate=0.1) for seed in range(3)]
        streamed = [r for group in through.train_stream([[s] for s in steps]) for r in group]
        expected = [r for group in direct.train_stream([[s] for s in steps]) for r in group]
        assert streamed == expected  # bidi stream
        assert through.get_parameters() == direct.get_parameters()
    assert proxy.dropped == []
    assert proxy.calls["UploadParameters"] == proxy.calls["Train"] == 1
