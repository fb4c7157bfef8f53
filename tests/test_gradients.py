"""ComputeGradients, ApplyUpdate and the other RPCs against local PyTorch, the oracle."""

from __future__ import annotations

import grpc
import pytest
import torch
from helpers import (
    TIMEOUT,
    apply,
    compute,
    decoded,
    get_parameters,
    linear_batch,
    set_parameters,
)
from torch import nn

from gradserve.codec import tensor_from_proto, tensor_to_proto
from gradserve.v1 import gradserve_pb2 as pb

MLP_SPEC = "mlp:5-7-3:tanh"


def local_mlp(parameters: dict[str, torch.Tensor]) -> nn.Sequential:
    module = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    module.load_state_dict(parameters)
    return module


def local_model(model: str, parameters: dict[str, torch.Tensor]):
    """(parameters requiring grad, forward) for the server's model, built from torch alone."""
    if model == "linear":
        w = parameters["w"].clone().requires_grad_()
        b = parameters["b"].clone().requires_grad_()
        return {"w": w, "b": b}, lambda x: w * x + b
    module = local_mlp(parameters)
    return dict(module.named_parameters()), module


def local_loss(loss: str, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if loss == "cross_entropy":
        return nn.functional.cross_entropy(prediction, target)
    return ((prediction - target) ** 2).mean()


def make_batch(model: str, loss: str, size: int, generator: torch.Generator):
    if model == "linear":
        return linear_batch(size, generator)
    x = torch.randn(size, 5, generator=generator)
    if loss == "cross_entropy":
        return x, torch.randint(0, 3, (size,), generator=generator)
    return x, torch.randn(size, 3, generator=generator)


CASES = [("linear", "mse"), (MLP_SPEC, "cross_entropy"), (MLP_SPEC, "mse")]


@pytest.mark.parametrize(("model", "loss"), CASES)
def test_loss_and_gradients_equal_local_pytorch(make_server, make_stub, model, loss) -> None:
    stub = make_stub(make_server(model=model, loss=loss))
    generator = torch.Generator().manual_seed(1)
    parameters, forward = local_model(model, get_parameters(stub))
    x, y = make_batch(model, loss, 16, generator)

    response = compute(stub, x, y, return_gradients=True)

    expected = local_loss(loss, forward(x), y)
    expected.backward()
    assert response.loss == pytest.approx(expected.item(), rel=1e-6)
    assert (response.batch_size, response.accumulated_batches) == (16, 1)
    assert response.accumulated_samples == 16
    assert response.model_version == 0
    gradients = decoded(response.gradients)
    assert gradients.keys() == parameters.keys()
    for name, parameter in parameters.items():
        torch.testing.assert_close(gradients[name], parameter.grad, rtol=1e-5, atol=1e-6)


def test_seed_run_is_bitwise_the_seed_loop(server, stub) -> None:
    torch.manual_seed(42)
    X = torch.rand(100, 1)
    y = 2 * X + 1 + 0.1 * torch.randn(100, 1)
    w = torch.randn(1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    set_parameters(stub, {"w": w.detach(), "b": b.detach()})
    initial_w = w.detach().clone()
    lr = 0.01

    for _ in range(100):
        for i in range(0, 100, 10):
            X_batch, y_batch = X[i : i + 10], y[i : i + 10]
            y_pred = w * X_batch + b
            loss = ((y_pred - y_batch) ** 2).mean()
            loss.backward()
            with torch.no_grad():
                w -= lr * w.grad
                b -= lr * b.grad
            w.grad.zero_()
            b.grad.zero_()
            remote = compute(stub, X_batch, y_batch)
            assert remote.loss == loss.item()
            apply(stub, lr)

    final = get_parameters(stub)
    assert torch.equal(final["w"], w.detach())
    assert torch.equal(final["b"], b.detach())
    assert server.store.version == 1 + 1000
    # The parameters moved towards w = 2, b = 1, so the comparison is not vacuous.
    assert abs(final["w"].item() - 2) < abs(initial_w.item() - 2)
    assert final["b"].item() > 0.5


@pytest.mark.parametrize("model", ["linear", MLP_SPEC])
@pytest.mark.parametrize(
    "reduction", [pb.REDUCTION_SUM, pb.REDUCTION_MEAN, pb.REDUCTION_UNSPECIFIED]
)
def test_k_batches_then_one_update_equals_k_backward_calls(
    make_server, make_stub, model, reduction
) -> None:
    loss = "mse"
    server = make_server(model=model, loss=loss)
    stub = make_stub(server)
    parameters, forward = local_model(model, get_parameters(stub))
    generator = torch.Generator().manual_seed(3)
    k, lr = 4, 0.05
    for size in (3, 8, 5, 8):  # unequal batch sizes: MEAN divides by batches, not samples
        x, y = make_batch(model, loss, size, generator)
        compute(stub, x, y)
        local_loss(loss, forward(x), y).backward()
    for name, parameter in parameters.items():
        assert torch.equal(server.store.gradients()[name], parameter.grad), name

    response = apply(stub, lr, reduction=reduction)

    with torch.no_grad():
        for parameter in parameters.values():
            if reduction == pb.REDUCTION_MEAN:
                parameter.grad /= k
            parameter.sub_(lr * parameter.grad)
    assert (response.applied_batches, response.applied_samples) == (k, 24)
    norm = torch.cat([p.grad.double().flatten() for p in parameters.values()]).norm()
    assert response.gradient_norm == pytest.approx(norm.item(), rel=1e-9)
    remote = get_parameters(stub)
    for name, parameter in parameters.items():
        assert torch.equal(remote[name], parameter.detach()), name


@pytest.mark.parametrize(
    ("spec", "make_optimizer"),
    [
        ("sgd:momentum=0.9", lambda p: torch.optim.SGD(p, lr=0.0, momentum=0.9)),
        (
            "sgd:momentum=0.9,nesterov=true,weight_decay=0.01",
            lambda p: torch.optim.SGD(p, lr=0.0, momentum=0.9, nesterov=True, weight_decay=0.01),
        ),
        ("adam", lambda p: torch.optim.Adam(p, lr=0.0)),
        (
            "adam:betas=0.8/0.99,amsgrad=true",
            lambda p: torch.optim.Adam(p, lr=0.0, betas=(0.8, 0.99), amsgrad=True),
        ),
        ("adamw:weight_decay=0.1", lambda p: torch.optim.AdamW(p, lr=0.0, weight_decay=0.1)),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_torch_optimizers_step_bitwise_like_local_torch_optim(
    make_server, make_stub, spec, make_optimizer
) -> None:
    stub = make_stub(make_server(model=MLP_SPEC, optimizer=spec))
    module = local_mlp(get_parameters(stub))
    optimizer = make_optimizer(module.parameters())
    generator = torch.Generator().manual_seed(5)
    for step, lr in enumerate([0.1, 0.05, 0.02, 0.0, 0.01]):
        for _ in range(2):
            x, y = make_batch(MLP_SPEC, "cross_entropy", 6, generator)
            compute(stub, x, y)
            nn.functional.cross_entropy(module(x), y).backward()
        assert apply(stub, lr).model_version == step + 1
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad()
    remote = get_parameters(stub)
    for name, parameter in module.named_parameters():
        assert torch.equal(remote[name], parameter.detach()), name


def test_evaluate_returns_loss_and_predictions_and_accumulates_nothing(make_server, make_stub):
    server = make_server(model=MLP_SPEC)
    stub = make_stub(server)
    module = local_mlp(get_parameters(stub))
    x, y = make_batch(MLP_SPEC, "cross_entropy", 9, torch.Generator().manual_seed(2))
    request = pb.EvaluateRequest(
        inputs=tensor_to_proto(x), targets=tensor_to_proto(y), return_predictions=True
    )
    response = stub.Evaluate(request, timeout=TIMEOUT)
    with torch.no_grad():
        expected = module(x)
    assert response.has_loss
    assert response.loss == pytest.approx(nn.functional.cross_entropy(expected, y).item(), 1e-6)
    assert response.batch_size == 9
    torch.testing.assert_close(tensor_from_proto(response.predictions), expected)
    assert all(gradient is None for gradient in server.store.gradients().values())

    no_targets = stub.Evaluate(pb.EvaluateRequest(inputs=tensor_to_proto(x)), timeout=TIMEOUT)
    assert (no_targets.has_loss, no_targets.HasField("predictions")) == (False, False)
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
    assert (info.accumulated_batches, info.model_version) == (0, 0)


def test_get_parameters_by_name_and_all(stub) -> None:
    everything = get_parameters(stub)
    assert list(everything) == ["w", "b"]
    assert list(get_parameters(stub, "b")) == ["b"]
    assert torch.equal(get_parameters(stub, "b")["b"], everything["b"])


def test_set_parameters_bumps_version_and_drops_accumulated_gradients(server, stub) -> None:
    compute(stub, *linear_batch(4))
    response = set_parameters(stub, {"w": torch.tensor([3.5])})
    assert response.model_version == 1
    assert get_parameters(stub, "w")["w"].item() == 3.5
    assert all(gradient is None for gradient in server.store.gradients().values())
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
    assert (info.accumulated_batches, info.accumulated_samples, info.model_version) == (0, 0, 1)
    with pytest.raises(grpc.RpcError) as caught:
        apply(stub, 0.1)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_model_info_describes_the_model(make_server, make_stub) -> None:
    stub = make_stub(
        make_server(model="mlp:5-7-3", optimizer="sgd:momentum=0.5", max_batch_elements=1000)
    )
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT)
    assert (info.model, info.model_spec, info.loss) == ("mlp", "mlp:5-7-3:relu", "cross_entropy")
    assert "sgd" in info.optimizer
    assert "momentum=0.5" in info.optimizer
    assert [(p.name, list(p.shape)) for p in info.parameters] == [
        ("0.weight", [7, 5]),
        ("0.bias", [7]),
        ("2.weight", [3, 7]),
        ("2.bias", [3]),
    ]
    assert all(p.dtype == pb.DATA_TYPE_FLOAT32 for p in info.parameters)
    assert info.parameter_count == 7 * 5 + 7 + 3 * 7 + 3
    assert (info.input.dtype, list(info.input.shape)) == (pb.DATA_TYPE_FLOAT32, [-1, 5])
    assert (info.target.dtype, list(info.target.shape)) == (pb.DATA_TYPE_INT64, [-1])
    assert info.max_batch_elements == 1000
    assert info.max_message_bytes > 4 * 1024 * 1024


def test_discard_gradients_zeroes_the_accumulator_without_stepping(server, stub) -> None:
    before = get_parameters(stub)
    compute(stub, *linear_batch(4))
    compute(stub, *linear_batch(4))
    response = stub.DiscardGradients(pb.DiscardGradientsRequest(), timeout=TIMEOUT)
    assert (response.discarded_batches, response.model_version) == (2, 0)
    assert all(gradient is None for gradient in server.store.gradients().values())
    with pytest.raises(grpc.RpcError) as caught:
        apply(stub, 0.1)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    after = get_parameters(stub)
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_model_version_counts_updates_and_tags_gradients(stub) -> None:
    assert compute(stub, *linear_batch(4)).model_version == 0
    first = apply(stub, 0.1)
    assert (first.model_version, first.applied_batches, first.applied_samples) == (1, 1, 4)
    response = compute(stub, *linear_batch(2))
    assert (response.model_version, response.accumulated_batches) == (1, 1)
    assert apply(stub, 0.1, expected_version=1).model_version == 2


def test_apply_update_with_nothing_accumulated_is_failed_precondition(stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        apply(stub, 0.1)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT).model_version == 0


def test_expected_version_mismatch_is_aborted_and_applies_nothing(server, stub) -> None:
    compute(stub, *linear_batch(4))
    before_parameters, before_gradients = get_parameters(stub), server.store.gradients()
    for call in (
        lambda: apply(stub, 0.1, expected_version=7),
        lambda: set_parameters(stub, {"w": torch.tensor([9.0])}, expected_version=7),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.ABORTED
        assert "expected_version" in caught.value.details()
    after = get_parameters(stub)
    for name, value in before_parameters.items():
        assert torch.equal(after[name], value)
        assert torch.equal(server.store.gradients()[name], before_gradients[name])
    assert apply(stub, 0.1, expected_version=0).applied_batches == 1
