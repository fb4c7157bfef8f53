"""The fast paths: the Train stream and chunked parameter transfer, against the unary oracle."""

from __future__ import annotations

import threading

import grpc
import pytest
import torch

from gradserve.client.config import ParallelConfig, ScheduleConfig, TrainConfig, TransportConfig
from gradserve.client.data import seed_data
from gradserve.client.gradient_client import GradientClient, TrainStep
from gradserve.client.loop import train
from gradserve.client.metrics import TrainMetrics
from gradserve.client.recorder import Recorder
from gradserve.client.session import make_plan, make_transport
from gradserve.errors import FailedPreconditionError, InvalidArgumentError, VersionConflictError
from gradserve.server.app import GradientServer
from gradserve.v1 import gradserve_pb2 as pb
from tests.helpers import Snapshot, field_violations


def local_seed_run(seed: int, epochs: int, lr: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    data = seed_data(seed)
    x, y = data.dataset.inputs, data.dataset.targets
    w = data.initial_w.clone().requires_grad_()
    b = data.initial_b.clone().requires_grad_()
    for _ in range(epochs):
        for i in range(0, 100, 10):
            loss = ((w * x[i : i + 10] + b - y[i : i + 10]) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                w -= lr * w.grad
                b -= lr * b.grad
                w.grad.zero_()
                b.grad.zero_()
    return w.detach(), b.detach()


def client_for(server: GradientServer) -> GradientClient:
    return GradientClient(server.address, timeout=10)


@pytest.mark.parametrize(("steps_per_request", "window"), [(1, 8), (10, 4), (1000, 1)])
def test_seed_run_over_the_stream_is_bitwise_the_local_loop(
    server: GradientServer, steps_per_request: int, window: int
) -> None:
    data = seed_data(3)
    x, y = data.dataset.inputs, data.dataset.targets
    steps = [TrainStep.of(((x[i : i + 10], y[i : i + 10]),), 0.01) for i in range(0, 100, 10)] * 100
    groups = [steps[i : i + steps_per_request] for i in range(0, len(steps), steps_per_request)]
    with client_for(server) as client:
        client.set_parameters({"w": data.initial_w, "b": data.initial_b})
        results = [r for group in client.train_stream(groups, window=window) for r in group]
        _, parameters = client.get_parameters()
    w, b = local_seed_run(3, 100)
    assert torch.equal(parameters["w"], w)
    assert torch.equal(parameters["b"], b)
    assert [r.model_version for r in results] == list(range(2, 1002))
    assert all(r.applied and r.applied_batches == 1 for r in results)


def test_accumulating_steps_match_the_unary_calls(make_server) -> None:
    streamed, unary = make_server(), make_server()
    torch.manual_seed(0)
    batches = [(torch.rand(5, 1), torch.rand(5, 1)) for _ in range(6)]
    with client_for(streamed) as fast, client_for(unary) as slow:
        groups = [
            [TrainStep.of(batches[:3], 0.1, "mean"), TrainStep.of(batches[3:5])],
            [TrainStep.of(batches[5:], 0.05)],
        ]
        results = [r for group in fast.train_stream(groups) for r in group]
        for inputs, targets in batches[:3]:
            slow.compute_gradients(inputs, targets)
        slow.apply_update(0.1, reduction="mean")
        for inputs, targets in batches[3:]:
            slow.compute_gradients(inputs, targets)
        slow.apply_update(0.05)
        fast_version, fast_values = fast.get_parameters()
        slow_version, slow_values = slow.get_parameters()
    assert fast_version == slow_version == 2
    for name, value in slow_values.items():
        assert torch.equal(fast_values[name], value), name
    assert [r.applied for r in results] == [True, False, True]
    assert [r.accumulated_batches for r in results] == [0, 2, 0]
    assert results[2].applied_batches == 3


def test_a_bad_batch_anywhere_rejects_the_whole_request(server: GradientServer, stub) -> None:
    before = Snapshot.take(server, stub)
    good = (torch.rand(4, 1), torch.rand(4, 1))
    bad = (torch.rand(4, 2), torch.rand(4, 1))
    with client_for(server) as client, pytest.raises(InvalidArgumentError) as caught:
        list(client.train_stream([[TrainStep.of((good,), 0.1), TrainStep.of((good, bad), 0.1)]]))
    assert caught.value.field == "steps[1].batches[1].inputs.shape"
    Snapshot.take(server, stub).assert_same(before)


def test_a_failing_step_says_how_many_steps_were_applied(server: GradientServer) -> None:
    batch = (torch.rand(4, 1), torch.rand(4, 1))
    with client_for(server) as client:
        version = client.model_info().model_version
        steps = [
            TrainStep.of((batch,), 0.1),
            TrainStep.of((batch,), 0.1, expected_version=version),
        ]
        with pytest.raises(VersionConflictError) as caught:
            list(client.train_stream([steps]))
        assert "1 of 2 steps" in str(caught.value)
        assert client.model_info().model_version == version + 1


def test_a_diverging_stream_stops_with_failed_precondition(server: GradientServer) -> None:
    batch = (torch.full((4, 1), 1e30), torch.zeros(4, 1))
    with client_for(server) as client, pytest.raises(FailedPreconditionError):
        list(client.train_stream([[TrainStep.of((batch,), 0.1)]]))


def test_negative_learning_rate_in_a_step_names_the_step(server: GradientServer, stub) -> None:
    before = Snapshot.take(server, stub)
    batch = pb.Batch(
        inputs=pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[1, 1], data=b"\0\0\x80?"),
        targets=pb.Tensor(dtype=pb.DATA_TYPE_FLOAT32, shape=[1, 1], data=b"\0\0\x80?"),
    )
    request = pb.TrainRequest(
        steps=[pb.TrainStep(batches=[batch], apply_update=True, learning_rate=-1)]
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(stub.Train(iter([request]), timeout=10))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(caught.value) == ["steps[0].learning_rate"]
    Snapshot.take(server, stub).assert_same(before)


def test_parameters_past_the_message_limit_travel_in_chunks(make_server) -> None:
    # ~8 MiB of parameters through a server whose messages are capped at 1 MiB.
    server = make_server(model="mlp:1024-2048-10", max_message_bytes=1024 * 1024)
    client = GradientClient(server.address, timeout=30, max_message_bytes=1024 * 1024)
    with client:
        version, original = client.stream_parameters(chunk_bytes=256 * 1024)
        assert sum(t.numel() * 4 for t in original.values()) > 8 * 1024 * 1024 - 4096
        torch.manual_seed(1)
        replaced = {name: torch.randn_like(value) for name, value in original.items()}
        new_version = client.upload_parameters(replaced, chunk_bytes=512 * 1024)
        assert new_version == version + 1
        _, read_back = client.stream_parameters()
    for name, value in replaced.items():
        assert torch.equal(read_back[name], value)


def test_an_upload_with_a_wrong_shape_changes_nothing(server: GradientServer, stub) -> None:
    before = Snapshot.take(server, stub)
    with client_for(server) as client, pytest.raises(InvalidArgumentError) as caught:
        client.upload_parameters({"w": torch.zeros(2)})
    assert caught.value.field == "chunks[0].shape"
    Snapshot.take(server, stub).assert_same(before)


def test_the_stream_is_refused_in_sync_mode_rather_than_bypassing_the_rounds(make_server) -> None:
    server = make_server(mode="sync", sync_contributions=2)
    batch = (torch.rand(4, 1), torch.rand(4, 1))
    with client_for(server) as client:
        with pytest.raises(FailedPreconditionError) as caught:
            list(client.train_stream([[TrainStep.of((batch,), 0.1)]]))
        assert caught.value.field == "mode"
        assert client.model_info().accumulated_batches == 0


def test_shared_trainers_interleave_on_one_model_without_conflicts(server: GradientServer) -> None:
    config = TrainConfig(
        schedule=ScheduleConfig(epochs=5),
        transport=TransportConfig(steps_per_request=1, window=2),
        parallel=ParallelConfig(shared=True),
    )
    data = seed_data(0).dataset
    summaries: list[object] = []
    errors: list[BaseException] = []

    def trainer() -> None:
        try:
            with client_for(server) as client:
                summaries.append(
                    train(
                        client,
                        make_plan(config, data),
                        make_transport(client, config),
                        Recorder(TrainMetrics("t", "linear")),
                    )
                )
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=trainer) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert [s.steps for s in summaries] == [50, 50]  # type: ignore[attr-defined]
    assert server.store.version == 100
