"""Finite in, finite out: a batch whose gradient overflows .grad when added, and an update whose
step overflows the parameters or the optimizer state, are refused and change nothing."""

from __future__ import annotations

import grpc
import pytest
import torch

from gradserve.client.gradient_client import GradientClient, TrainStep
from gradserve.errors import FailedPreconditionError
from gradserve.server.app import GradientServer
from gradserve.server.config import ModelConfig
from gradserve.server.models.optimizers import build_optimizer
from gradserve.server.models.specs import build_configured
from gradserve.server.store.parameter_store import ParameterStore
from gradserve.types import Reduction
from tests.conftest import ServerFactory
from tests.helpers import Snapshot, apply, compute, get_parameters, linear_batch, set_parameters

OPTIMIZERS = (
    "sgd",
    "sgd:momentum=0.9",
    "sgd:momentum=0.9,nesterov=true,weight_decay=0.1",
    "sgd:momentum=0.5,dampening=0.5",
    "adam",
    "adam:amsgrad=true,weight_decay=0.01",
    "adamw",
)


def huge_gradient_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """At w = b = 0: loss r^2 = 1e38 (finite), d/dw = 2 r x = -2e38 (finite, float32 max 3.4e38)."""
    return torch.tensor([[-1e19]]), torch.tensor([[-1e19]])


def test_a_batch_that_overflows_the_accumulated_gradient_is_refused(
    server: GradientServer, stub
) -> None:
    set_parameters(stub, {"w": torch.zeros(1), "b": torch.zeros(1)})
    inputs, targets = huge_gradient_batch()
    first = compute(stub, inputs, targets)
    assert first.accumulated_batches == 1
    before = Snapshot.take(server, stub)
    assert torch.isfinite(before.gradients["w"]).all()
    with pytest.raises(grpc.RpcError) as raised:
        compute(stub, inputs, targets)
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "nothing was accumulated" in raised.value.details()
    assert "'w'" in raised.value.details()
    Snapshot.take(server, stub).assert_same(before)
    # The first batch is still there and can be applied: the server is not poisoned.
    update = apply(stub, 1e-30)
    assert update.applied_batches == 1
    assert all(torch.isfinite(value).all() for value in get_parameters(stub).values())


def test_an_update_that_overflows_the_parameters_is_refused(server: GradientServer, stub) -> None:
    x, y = linear_batch(10, torch.Generator().manual_seed(1))
    compute(stub, x, y)
    before = Snapshot.take(server, stub)
    with pytest.raises(grpc.RpcError) as raised:
        apply(stub, 1e300)
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "nothing was applied" in raised.value.details()
    Snapshot.take(server, stub).assert_same(before)
    # The same gradients with a sane rate: exactly the seed arithmetic, from the old state.
    update = apply(stub, 0.01)
    after = get_parameters(stub)
    for name, value in before.parameters.items():
        gradient = before.gradients[name]
        assert gradient is not None
        assert torch.equal(after[name], value - 0.01 * gradient)
    assert update.model_version == before.version + 1


def _store(optimizer: str) -> ParameterStore:
    model = build_configured(ModelConfig(spec="linear", seed=0))
    return ParameterStore(model, build_optimizer(optimizer, list(model.module.parameters())))


def _state(store: ParameterStore) -> dict[str, object]:
    state = store.export_state()
    return {
        "parameters": state.parameters,
        "gradients": state.gradients,
        "optimizer": state.optimizer,
        "counts": (state.version, state.accumulated_batches, state.accumulated_samples),
    }


def _assert_equal(before: object, after: object, where: str = "state") -> None:
    """Exact equality of nested state: tensors by torch.equal (and dtype), the rest by ==."""
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor), where
        assert before.dtype == after.dtype and torch.equal(before, after), where
    elif isinstance(before, dict):
        assert isinstance(after, dict) and before.keys() == after.keys(), where
        for key in before:
            _assert_equal(before[key], after[key], f"{where}.{key}")
    elif isinstance(before, list | tuple):
        assert isinstance(after, list | tuple) and len(before) == len(after), where
        for index, (one, other) in enumerate(zip(before, after, strict=True)):
            _assert_equal(one, other, f"{where}[{index}]")
    else:
        assert before == after, where


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("reduction", [Reduction.SUM, Reduction.MEAN])
@pytest.mark.parametrize("earlier_steps", [0, 2])
def test_every_optimizer_rolls_a_refused_step_back_exactly(
    optimizer: str, reduction: Reduction, earlier_steps: int
) -> None:
    store = _store(optimizer)
    generator = torch.Generator().manual_seed(5)
    for _ in range(earlier_steps):  # with state (momentum, moments, step counts) and without
        store.compute_gradients(*linear_batch(10, generator))
        store.apply_update(0.01)
    store.compute_gradients(*linear_batch(10, generator))
    store.compute_gradients(*linear_batch(10, generator))
    before = _state(store)
    with pytest.raises(FailedPreconditionError, match="nothing was applied"):
        store.apply_update(1e300, reduction=reduction)
    _assert_equal(before, _state(store))
    # And the store goes on exactly as a twin that never saw the refused update.
    twin = _store(optimizer)
    twin.restore_state(store.export_state())
    store.apply_update(0.01, reduction=reduction)
    twin.apply_update(0.01, reduction=reduction)
    _assert_equal(_state(twin), _state(store))


def test_an_update_that_overflows_the_optimizer_state_is_refused() -> None:
    # Adam's second moment is (1 - beta2) * g^2: g = 1e30 is finite, g^2 is not in float32.
    store = _store("adam")
    store.compute_gradients(torch.tensor([[1e15]]), torch.tensor([[-1e15]]))
    before = _state(store)
    with pytest.raises(FailedPreconditionError, match="optimizer state"):
        store.apply_update(0.01)
    _assert_equal(before, _state(store))


def test_a_refused_update_inside_train_leaves_that_step_unapplied(
    make_server: ServerFactory,
) -> None:
    server = make_server(optimizer="adam")
    generator = torch.Generator().manual_seed(2)
    first, second = linear_batch(10, generator), linear_batch(10, generator)
    # The oracle: the same server, the same first step taken by the unary calls.
    oracle = make_server(optimizer="adam")
    with (
        GradientClient(server.address, timeout=10) as client,
        GradientClient(oracle.address, timeout=10) as reference,
    ):
        client.set_parameters(dict(reference.get_parameters()[1]))
        reference.set_parameters(dict(reference.get_parameters()[1]))
        reference.compute_gradients(*first)
        reference.apply_update(0.01)
        reference.compute_gradients(*second)
        steps = [TrainStep.of((first,), 0.01), TrainStep.of((second,), 1e300)]
        with pytest.raises(FailedPreconditionError) as raised:
            list(client.train_stream([steps], window=1))
        message = str(raised.value)
        assert "steps[1]" in message and "1 of 2 steps" in message
        assert "nothing was applied" in message
        _assert_equal(oracle.store.export_state().optimizer, server.store.export_state().optimizer)
        _assert_equal(reference.get_parameters(), client.get_parameters())
        _assert_equal(oracle.store.gradients(), server.store.gradients())
        assert client.model_info().accumulated_batches == 1
