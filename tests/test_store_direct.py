"""ParameterStore called directly, without gRPC: local torch is the oracle, bitwise."""

from __future__ import annotations

import copy

import pytest
import torch

from gradserve.client.data import seed_data
from gradserve.errors import FailedPreconditionError, InvalidArgumentError
from gradserve.server.config import ModelConfig
from gradserve.server.models.optimizers import build_optimizer
from gradserve.server.models.specs import build_configured
from gradserve.server.store.parameter_store import ParameterStore
from gradserve.types import Reduction, TrainStep

LEARNING_RATE = 0.01


def make_store(spec: str = "linear", seed: int = 0) -> ParameterStore:
    model = build_configured(ModelConfig(spec=spec, seed=seed))
    return ParameterStore(model, build_optimizer("sgd", list(model.module.parameters())))


def parameters(store: ParameterStore) -> dict[str, torch.Tensor]:
    return dict(store.read_parameters([], lambda name, value: (name, value.clone()))[1])


def test_seed_loop_is_bitwise_the_local_loop() -> None:
    data = seed_data(0)
    store = make_store(seed=0)
    # The store's linear model draws w = randn(1), b = zeros(1) after manual_seed(0).
    torch.manual_seed(0)
    w, b = torch.randn(1).requires_grad_(), torch.zeros(1).requires_grad_()
    inputs, targets = data.dataset.inputs, data.dataset.targets
    for _ in range(3):
        for start in range(0, len(inputs), 10):
            x, y = inputs[start : start + 10], targets[start : start + 10]
            result = store.compute_gradients(x, y, return_gradients=True)
            loss = ((w * x + b - y) ** 2).mean()
            loss.backward()
            assert result.loss == loss.item()
            assert torch.equal(result.gradients["w"], w.grad)
            assert torch.equal(result.gradients["b"], b.grad)
            update = store.apply_update(LEARNING_RATE)
            with torch.no_grad():
                w -= LEARNING_RATE * w.grad
                b -= LEARNING_RATE * b.grad
            w.grad.zero_()
            b.grad.zero_()
            assert update.applied_batches == 1
    after = parameters(store)
    assert torch.equal(after["w"], w.detach())
    assert torch.equal(after["b"], b.detach())
    assert store.snapshot() == (30, 0, 0)


def test_train_steps_equal_the_unary_calls() -> None:
    generator = torch.Generator().manual_seed(3)
    batches = [
        (torch.randn(6, 4, generator=generator), torch.randint(0, 3, (6,), generator=generator))
        for _ in range(4)
    ]
    unary, streamed = make_store("mlp:4-5-3"), make_store("mlp:4-5-3")
    for index in range(0, 4, 2):
        for x, y in batches[index : index + 2]:
            unary.compute_gradients(x, y)
        unary.apply_update(0.1, reduction=Reduction.MEAN)
    steps = [
        TrainStep.of(batches[index : index + 2], learning_rate=0.1, reduction="mean")
        for index in range(0, 4, 2)
    ]
    result = streamed.train(steps)
    assert [step.model_version for step in result.steps] == [1, 2]
    assert all(step.applied and step.applied_batches == 2 for step in result.steps)
    for name, value in parameters(unary).items():
        assert torch.equal(parameters(streamed)[name], value), name


def test_a_repeated_request_id_is_replayed_not_run_again() -> None:
    store = make_store()
    x, y = torch.ones(4, 1), torch.full((4, 1), 3.0)
    first = store.compute_gradients(x, y, request_id="a")
    again = store.compute_gradients(x, y, request_id="a")
    assert again.replayed and not first.replayed
    assert (again.loss, again.accumulated_batches) == (first.loss, 1)
    assert store.snapshot() == (0, 1, 4)
    update = store.apply_update(LEARNING_RATE, request_id="u")
    assert store.apply_update(LEARNING_RATE, request_id="u").replayed
    assert store.snapshot()[0] == update.model_version == 1


def test_rejected_calls_change_nothing_and_name_their_field() -> None:
    store = make_store()
    before = parameters(store)
    with pytest.raises(InvalidArgumentError) as caught:
        store.compute_gradients(torch.ones(4, 2), torch.ones(4, 1))
    assert caught.value.field == "inputs.shape"
    with pytest.raises(FailedPreconditionError):
        store.apply_update(LEARNING_RATE)
    good = (torch.ones(2, 1), torch.ones(2, 1))
    bad = (torch.ones(2, 1, dtype=torch.float64), torch.ones(2, 1))
    with pytest.raises(InvalidArgumentError) as caught:
        store.train([TrainStep.of([good]), TrainStep.of([good, bad], learning_rate=0.1)])
    assert caught.value.field == "steps[1].batches[1].inputs.dtype"
    assert str(caught.value).startswith("steps[1].batches[1].inputs.dtype")
    with pytest.raises(InvalidArgumentError) as caught:
        store.train([TrainStep.of([good], learning_rate=-1.0)])
    assert caught.value.field == "steps[0].learning_rate"
    assert store.snapshot() == (0, 0, 0)
    for name, value in parameters(store).items():
        assert torch.equal(value, before[name]), name


def test_a_step_that_fails_while_running_says_how_many_were_applied() -> None:
    store = make_store()
    batch = (torch.ones(2, 1), torch.ones(2, 1))
    steps = [
        TrainStep.of([batch], learning_rate=0.1),
        TrainStep.of([batch], 0.1, expected_version=7),
    ]
    with pytest.raises(Exception) as caught:
        store.train(steps)
    assert caught.value.field == "expected_version"  # type: ignore[attr-defined]
    assert str(caught.value).startswith("steps[1]: expected_version: 7")
    assert "1 of 2 steps of this request were applied" in str(caught.value)
    assert store.snapshot() == (1, 1, 2)


def test_accumulated_gradients_and_norm_match_torch() -> None:
    store = make_store("mlp:3-4-2")
    local = copy.deepcopy(store.model.module)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = (
            torch.randn(5, 3, generator=generator),
            torch.randint(0, 2, (5,), generator=generator),
        )
        store.compute_gradients(x, y)
        torch.nn.functional.cross_entropy(local(x), y).backward()
    accumulated = store.gradients()
    for name, parameter in local.named_parameters():
        assert torch.equal(accumulated[name], parameter.grad), name
    update = store.apply_update(0.5, reduction=Reduction.MEAN)
    norms = [
        torch.linalg.vector_norm(p.grad / 3, dtype=torch.float64).item() for p in local.parameters()
    ]
    assert update.gradient_norm == pytest.approx(sum(n * n for n in norms) ** 0.5, rel=1e-12)
    with torch.no_grad():
        for parameter in local.parameters():
            parameter.sub_(0.5 * (parameter.grad / 3))
    for name, parameter in local.named_parameters():
        assert torch.equal(parameters(store)[name], parameter.detach()), name
