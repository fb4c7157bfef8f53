"""Dataset passes (TrainRequest.dataset_pass): many steps over an uploaded dataset named in one
message train bitwise as the same steps sent one by one and as the seed's local loop, fail as
those steps fail, refuse a malformed pass naming the field with nothing changed, replay by
request id, and are what the trainer sends by default with its data on the server."""

from __future__ import annotations

import math

import grpc
import pytest
import torch
from helpers import TIMEOUT, Snapshot, field_violations
from proxy import FaultyProxy
from test_train_cli import assert_parameters_equal, seed_loop
from test_train_cli import train as cli_train

from gradserve.client.data import seed_data
from gradserve.client.gradient_client import DatasetBatch, DatasetPass, GradientClient, TrainStep
from gradserve.errors import FailedPreconditionError
from gradserve.serde_passes import dataset_pass_into_proto
from gradserve.v1 import gradserve_pb2 as pb

SEED_LR = 0.01


def seed_client(address: str) -> GradientClient:
    """A client of a server holding the seed's data as "seed", at the tutorial's w, b."""
    seed = seed_data(0)
    client = GradientClient(address, timeout=TIMEOUT)
    client.set_parameters({"w": seed.initial_w, "b": seed.initial_b})
    client.upload_dataset("seed", seed.dataset.inputs, seed.dataset.targets)
    return client


def epoch_orders(epochs: int, shuffle: bool, samples: int = 100) -> list[list[int]]:
    """Each epoch's sample order, as the trainer's plan draws it (client/plan.py)."""
    shuffler = torch.Generator().manual_seed(0)
    if not shuffle:
        return [list(range(samples))] * epochs
    return [torch.randperm(samples, generator=shuffler).tolist() for _ in range(epochs)]


def inline_steps(
    inputs: torch.Tensor, targets: torch.Tensor, order: list[int], size: int, lr: float
) -> list[TrainStep]:
    """The same samples as one TrainStep per batch, the tensors sent inline."""
    index = torch.tensor(order)
    return [
        TrainStep.of([(inputs[index[i : i + size]], targets[index[i : i + size]])], lr)
        for i in range(0, len(order), size)
    ]


@pytest.mark.parametrize("shuffle", [False, True])
def test_the_seed_run_as_passes_is_bitwise_the_local_loop_and_inline_steps(
    make_server, shuffle: bool
) -> None:
    orders = epoch_orders(100, shuffle)
    local = seed_loop(shuffle=shuffle)
    seed = seed_data(0).dataset
    with seed_client(make_server().address) as passes, seed_client(make_server().address) as steps:
        losses = []
        for epochs in range(0, 100, 10):  # ten passes of ten epochs, as the trainer sends them
            order = [i for o in orders[epochs : epochs + 10] for i in o]
            result = passes.train_pass(DatasetPass("seed", 10, SEED_LR, indices=tuple(order)))
            losses += result.losses
            inline = inline_steps(seed.inputs, seed.targets, order, 10, SEED_LR)
            for results in steps.train_stream([inline]):
                assert tuple(r.losses[0] for r in results) == result.losses
        assert result.model_version == 1 + 1000 and result.gradient_norms == ()
        final, inline_final = passes.get_parameters()[1], steps.get_parameters()[1]
    assert torch.equal(final["w"], local.w.detach()) and torch.equal(final["b"], local.b.detach())
    assert all(torch.equal(final[n], inline_final[n]) for n in final)
    assert [sum(losses[e * 10 : e * 10 + 10]) / 10 for e in range(100)] == local.epoch_losses


@pytest.mark.parametrize("shuffle", [False, True])
def test_a_partial_last_batch_is_the_plans_and_norms_come_when_asked(
    make_server, shuffle: bool
) -> None:
    """100 samples in batches of 32: 32, 32, 32 and the last 4, as client/plan.py cuts them."""
    seed = seed_data(0).dataset
    order = epoch_orders(1, shuffle)[0]
    with seed_client(make_server().address) as passes, seed_client(make_server().address) as steps:
        named = (
            DatasetPass("seed", 32, SEED_LR, indices=tuple(order), gradient_norms=True)
            if shuffle
            else DatasetPass("seed", 32, SEED_LR, count=100, gradient_norms=True)
        )
        result = passes.train_pass(named)
        inline = inline_steps(seed.inputs, seed.targets, order, 32, SEED_LR)
        expected = next(iter(steps.train_stream([inline])))
        assert len(result.losses) == 4
        assert result.losses == tuple(r.losses[0] for r in expected)
        assert result.gradient_norms == tuple(r.gradient_norm for r in expected)
        final, inline_final = passes.get_parameters()[1], steps.get_parameters()[1]
    assert all(torch.equal(final[n], inline_final[n]) for n in final)


def test_the_norm_gauge_is_nan_after_a_pass_that_did_not_compute_it(server) -> None:
    """The gauge says what the last update's norm was, or that it is not known: never an older
    update's norm in its place."""

    def norm() -> float | None:
        return server.metrics.registry.get_sample_value("gradserve_gradient_norm", {"run": ""})

    with seed_client(server.address) as client:
        client.train_pass(DatasetPass("seed", 10, SEED_LR, count=100, gradient_norms=True))
        asked = client.train_pass(
            DatasetPass("seed", 10, SEED_LR, count=100, gradient_norms=True)
        ).gradient_norms[-1]
        assert norm() == asked
        client.train_pass(DatasetPass("seed", 10, SEED_LR, count=100))
        value = norm()
        assert value is not None and math.isnan(value)


def test_an_mlp_pass_is_bitwise_inline_steps(make_server) -> None:
    generator = torch.Generator().manual_seed(7)
    inputs = torch.randn(100, 20, generator=generator)
    targets = torch.randint(0, 4, (100,), generator=generator)
    order = torch.randperm(100, generator=generator).tolist() * 3
    server = make_server()
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        for run in ("pass", "inline"):
            client.create_run(run, model="mlp:20-32-4", seed=5, optimizer="adam")
        passes, inline = client.for_run("pass"), client.for_run("inline")
        passes.upload_dataset("digits", inputs, targets)
        result = passes.train_pass(
            DatasetPass("digits", 16, 0.01, indices=tuple(order), max_grad_norm=0.1)
        )
        expected = next(iter(inline.train_stream([[
            TrainStep.of([batch], 0.01, max_grad_norm=0.1)
            for batch in (s.batches[0] for s in inline_steps(inputs, targets, order, 16, 0.01))
        ]])))  # fmt: skip
        assert result.losses == tuple(r.losses[0] for r in expected)
        assert result.clipped == tuple(r.clipped for r in expected) and any(result.clipped)
        # Not asked for: none answered (clipping computed its own).
        assert result.gradient_norms == () and result.model_version == len(expected)
        a, b = passes.get_parameters()[1], inline.get_parameters()[1]
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize(("big_target", "lr", "refused"), [(True, SEED_LR, 5), (False, 1e36, 1)])
def test_a_step_that_is_refused_mid_pass_fails_as_the_same_steps(
    make_server, big_target: bool, lr: float, refused: int
) -> None:
    """Sample 55's target makes its batch's loss overflow: step 5 of batches of 10 is refused.
    Or the rate makes the first update's parameters huge and the next step overflows: with
    no norms asked, what the pass skips is the norm that would have seen it. Either way the
    steps before stay applied and the refused batch is not kept, on either path."""
    seed = seed_data(0).dataset
    targets = seed.targets.clone()
    if big_target:
        targets[55] = 1e20
    errors, states = [], []
    for as_pass in (True, False):
        server = make_server()
        with GradientClient(server.address, timeout=TIMEOUT) as client:
            client.upload_dataset("seed", seed.inputs, targets)
            before = client.model_info().model_version
            with pytest.raises(FailedPreconditionError) as raised:
                if as_pass:
                    client.train_pass(DatasetPass("seed", 10, lr, count=100))
                else:
                    steps = [
                        TrainStep((), True, lr, dataset_batches=(DatasetBatch("seed", start=s, count=10),))
                        for s in range(0, 100, 10)
                    ]  # fmt: skip
                    list(client.train_stream([steps]))
            errors.append(raised.value)
            info = client.model_info()
            states.append((info.model_version - before, info.accumulated_batches,
                           client.get_parameters()[1]))  # fmt: skip
    on_pass, on_steps = errors
    assert on_pass.field == on_steps.field and on_pass.reason == on_steps.reason
    assert on_pass.message.startswith(f"dataset_pass.steps[{refused}]: ")
    assert on_steps.message.startswith(f"steps[{refused}]: ")
    assert (
        on_pass.message.split(": ", 1)[1].split(" (")[0]
        == (on_steps.message.split(": ", 1)[1].split(" (")[0])
    )
    (applied, accumulated, values), (applied_too, accumulated_too, values_too) = states
    assert (applied, accumulated) == (applied_too, accumulated_too) == (refused, 0)
    assert all(torch.equal(values[n], values_too[n]) for n in values)


def train_request(descriptor: DatasetPass | None, **fields: object) -> pb.TrainRequest:
    request = pb.TrainRequest(**fields)
    if descriptor is not None:
        dataset_pass_into_proto(descriptor, request.dataset_pass)
    return request


def call_train(stub, request: pb.TrainRequest) -> list[pb.TrainResponse]:
    return list(stub.Train(iter([request]), timeout=TIMEOUT))


BAD_PASSES = [
    (DatasetPass("nothing", 10, SEED_LR, count=10), grpc.StatusCode.NOT_FOUND,
     "dataset_pass.dataset"),
    (DatasetPass("seed", 0, SEED_LR, count=10), grpc.StatusCode.INVALID_ARGUMENT,
     "dataset_pass.batch_size"),
    (DatasetPass("seed", 10, SEED_LR, indices=(3, 100)), grpc.StatusCode.INVALID_ARGUMENT,
     "dataset_pass.indices"),
    (DatasetPass("seed", 10, SEED_LR, indices=(3, -1)), grpc.StatusCode.INVALID_ARGUMENT,
     "dataset_pass.indices"),
    (DatasetPass("seed", 10, SEED_LR, start=95, count=10), grpc.StatusCode.INVALID_ARGUMENT,
     "dataset_pass.start"),
    (DatasetPass("seed", 10, SEED_LR), grpc.StatusCode.INVALID_ARGUMENT, "dataset_pass.count"),
    (DatasetPass("seed", 10, -1.0, count=100), grpc.StatusCode.INVALID_ARGUMENT,
     "dataset_pass.learning_rate"),
    (DatasetPass("seed", 10, SEED_LR, count=100, max_grad_norm=0.0),
     grpc.StatusCode.INVALID_ARGUMENT, "dataset_pass.max_grad_norm"),
    (DatasetPass("seed", 10, SEED_LR, count=100, expected_version=7), grpc.StatusCode.ABORTED,
     "dataset_pass.expected_version"),
    (DatasetPass("seed", 1, SEED_LR, indices=tuple(range(100)) * 1001),
     grpc.StatusCode.RESOURCE_EXHAUSTED, "dataset_pass.indices"),
]  # fmt: skip


@pytest.mark.parametrize(("descriptor", "code", "field"), BAD_PASSES)
def test_a_bad_pass_names_its_field_and_changes_nothing(
    server, stub, descriptor: DatasetPass, code: grpc.StatusCode, field: str
) -> None:
    with seed_client(server.address) as client:
        seed = seed_data(0).dataset
        client.compute_gradients(seed.inputs[:10], seed.targets[:10])  # accumulated: kept
        before = Snapshot.take(server, stub)
        with pytest.raises(grpc.RpcError) as raised:
            call_train(stub, train_request(descriptor))
        assert raised.value.code() == code, raised.value.details()
        assert field_violations(raised.value) == [field]
        Snapshot.take(server, stub).assert_same(before)


def test_steps_and_a_pass_together_are_refused(server, stub) -> None:
    with seed_client(server.address):
        before = Snapshot.take(server, stub)
        request = train_request(DatasetPass("seed", 10, SEED_LR, count=100))
        request.steps.add(apply_update=True, learning_rate=SEED_LR)
        with pytest.raises(grpc.RpcError) as raised:
            call_train(stub, request)
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field_violations(raised.value) == ["dataset_pass"]
        Snapshot.take(server, stub).assert_same(before)


def test_a_repeated_request_id_replays_the_pass(server, stub) -> None:
    descriptor = DatasetPass("seed", 10, SEED_LR, indices=tuple(range(99, -1, -1)))
    with seed_client(server.address) as client:
        first = call_train(stub, train_request(descriptor, request_id="pass-1"))
        after = Snapshot.take(server, stub)
        again = call_train(stub, train_request(descriptor, request_id="pass-1"))
        assert again[0].pass_result == first[0].pass_result and after.version == 11
        Snapshot.take(server, stub).assert_same(after)
        other = DatasetPass("seed", 10, SEED_LR, indices=tuple(range(100)))
        with pytest.raises(grpc.RpcError) as raised:
            call_train(stub, train_request(other, request_id="pass-1"))
        assert field_violations(raised.value) == ["request_id"]
        assert client.model_info().model_version == 11


def test_the_trainer_sends_passes_with_its_data_on_the_server(server) -> None:
    done = cli_train("--server", server.address, "--epochs", "3", "--json")
    assert done.returncode == 0, done.stderr
    local = seed_loop(epochs=3)
    assert_parameters_equal(done.summary(), local)
    assert done.summary()["epoch_losses"] == local.epoch_losses
    # Every one of the 30 steps came in a pass (and --data-on-server off sends none).
    passed = server.metrics.registry.get_sample_value("gradserve_dataset_pass_steps_total")
    assert passed == 30
    done = cli_train("--server", server.address, "--epochs", "3", "--data-on-server", "off")
    assert done.returncode == 0, done.stderr
    assert server.metrics.registry.get_sample_value("gradserve_dataset_pass_steps_total") == 30


def without_dataset_pass(method: str, message: bytes) -> bytes:
    """A Train request as a server that predates dataset passes reads it: no such field."""
    if method != "Train":
        return message
    request = pb.TrainRequest.FromString(message)
    request.ClearField("dataset_pass")
    return request.SerializeToString()


def test_a_server_without_passes_gets_steps_and_the_run_ends_bitwise(server) -> None:
    with FaultyProxy(server.address, rewrite_stream_requests=without_dataset_pass) as proxy:
        done = cli_train("--server", proxy.address, "--epochs", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert "the server takes no dataset passes" in done.stderr
    assert_parameters_equal(done.summary(), seed_loop(epochs=3))
    assert server.metrics.registry.get_sample_value("gradserve_dataset_pass_steps_total") == 0
