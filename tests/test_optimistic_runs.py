"""Train and ComputeGradients run optimistically (server/store/optimistic_runs.py): what a refused
step leaves is what the checked path leaves, torch's RNG included, and a passing step costs
about the torch ops of the local loop. Local torch is the oracle."""

from __future__ import annotations

import collections
import copy
import gc
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from gradserve.client.data import seed_data
from gradserve.errors import FailedPreconditionError, InvalidArgumentError, VersionConflictError
from gradserve.server.config import ModelConfig
from gradserve.server.models.optimizers import build_optimizer
from gradserve.server.models.specs import build_configured
from gradserve.server.store.parameter_store import ParameterStore
from gradserve.types import TrainStep

LEARNING_RATE = 0.1


def make_store(spec: str, loss: str | None = None, optimizer: str = "sgd") -> ParameterStore:
    model = build_configured(ModelConfig(spec=spec, loss=loss, seed=0))
    return ParameterStore(model, build_optimizer(optimizer, list(model.module.parameters())))


class CountedOps(TorchDispatchMode):
    """Counts the aten ops that run inside it (forward, backward and optimizer alike)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.count += 1
        return func(*args, **(kwargs or {}))


def _ops(run: Callable[[], object]) -> int:
    with CountedOps() as counted:
        run()
    return counted.count


def test_a_seed_train_step_costs_about_the_local_loops_torch_ops() -> None:
    data = seed_data(0)
    x, y = data.dataset.inputs, data.dataset.targets
    batches = [(x[i : i + 10], y[i : i + 10]) for i in range(0, 100, 10)]
    store = make_store("linear")
    steps = [TrainStep.of([batch], 0.01) for batch in batches]
    store.train(steps)  # the first request allocates the start copies
    ours = _ops(lambda: store.train(steps))
    w = data.initial_w.clone().requires_grad_()
    b = data.initial_b.clone().requires_grad_()

    def local() -> None:
        for inputs, targets in batches:
            ((w * inputs + b - targets) ** 2).mean().backward()
            with torch.no_grad():
                w.sub_(0.01 * w.grad)
                b.sub_(0.01 * b.grad)
            w.grad.zero_()  # type: ignore[union-attr]
            b.grad.zero_()  # type: ignore[union-attr]

    local()
    theirs = _ops(local)
    # Per step: the gradient norm (a concatenation and a reduction) and the loss kept
    # detached; per request, the start copy and the checks. It was 38 ops against 24.
    assert ours <= theirs + 3 * len(steps), (ours, theirs)

    def unary() -> None:
        for inputs, targets in batches:
            store.compute_gradients(inputs, targets)
            store.apply_update(0.01)

    # The checks each call makes before it returns: inputs and targets (a sum each), .grad
    # (its norm, which the update answers), the stepped parameters (a sum), the loss read
    # back, and the copies a refusal puts back. It was 14 ops more per step.
    assert _ops(unary) <= theirs + 10 * len(batches), (_ops(unary), theirs)


def test_a_refused_step_in_a_long_request_leaves_what_the_checked_path_leaves() -> None:
    """Dropout draws from torch's RNG and batch norm updates its buffers in every forward
    pass: after the refusal both are as the checked path leaves them (the refused batch's
    forward drew its mask; its buffers were put back), with the steps before it applied."""
    store = make_store("mlp:2-6-1:dropout=0.5:batchnorm", loss="mse")
    local = copy.deepcopy(store.model.module)
    generator = torch.Generator().manual_seed(4)
    good = [(torch.randn(8, 2, generator=generator), torch.randn(8, 1, generator=generator))]
    good += [(torch.randn(8, 2, generator=generator), torch.randn(8, 1, generator=generator))]
    # Finite targets whose squared error overflows float32: the loss is inf.
    bad = (torch.randn(8, 2, generator=generator), torch.full((8, 1), 1e20))
    steps = [TrainStep.of([batch], LEARNING_RATE) for batch in [*good, bad, good[0]]]
    torch.manual_seed(11)
    with pytest.raises(FailedPreconditionError) as raised:
        store.train(steps)
    rng_after = torch.get_rng_state()
    assert raised.value.field == "inputs" and raised.value.reason == "NOT_FINITE"
    assert str(raised.value).startswith("steps[2]: ") and "2 of 4 steps" in str(raised.value)

    torch.manual_seed(11)
    local.train()
    for inputs, targets in good:
        ((local(inputs) - targets) ** 2).mean().backward()
        with torch.no_grad():
            for parameter in local.parameters():
                parameter.sub_(LEARNING_RATE * parameter.grad)  # the seed's -=
                parameter.grad.zero_()
    buffers = {name: value.clone() for name, value in local.named_buffers()}
    local(bad[0])  # the refused batch's forward pass, as the checked path ran it
    assert torch.equal(rng_after, torch.get_rng_state())
    assert store.snapshot() == (2, 0, 0)
    served = dict(store.model.module.named_parameters())
    for name, parameter in local.named_parameters():
        assert torch.equal(served[name], parameter), name
        assert torch.equal(served[name].grad, parameter.grad), name
    for name, value in store.model.module.named_buffers():
        assert torch.equal(value, buffers[name]), name


def test_a_version_conflict_mid_request_keeps_the_steps_before_it() -> None:
    data = seed_data(0)
    x, y = data.dataset.inputs, data.dataset.targets
    store, oracle = make_store("linear", optimizer="adam"), make_store("linear", optimizer="adam")
    first = TrainStep.of([(x[:10], y[:10])], 0.01)
    second = TrainStep.of([(x[10:20], y[10:20])], 0.01, expected_version=0)
    with pytest.raises(VersionConflictError) as raised:
        store.train([first, first, second])
    assert raised.value.field == "expected_version"
    assert "2 of 3 steps" in str(raised.value)
    oracle.train([first])
    oracle.train([first])
    oracle.compute_gradients(x[10:20], y[10:20])  # the failing step's batch stays accumulated
    assert store.snapshot() == oracle.snapshot() == (2, 1, 10)
    mine, theirs = store.export_state(), oracle.export_state()
    for name, value in theirs.parameters.items():
        assert torch.equal(mine.parameters[name], value), name
    for index, entries in theirs.optimizer["state"].items():
        for key, value in entries.items():
            assert torch.equal(mine.optimizer["state"][index][key], value), (index, key)


@pytest.mark.parametrize(
    ("bad_step", "field"),
    [(0, "steps[0].batches[0].inputs.data"), (1, "steps[1].batches[0].targets.data")],
)
def test_the_first_bad_value_in_request_order_is_named(bad_step: int, field: str) -> None:
    """Values are checked for the whole request at once; the error is still the first
    failing field in request order, ahead of a later malformed shape."""
    store = make_store("mlp:3-4-2")
    generator = torch.Generator().manual_seed(5)
    batches = [
        (torch.randn(4, 3, generator=generator), torch.randint(0, 2, (4,), generator=generator))
        for _ in range(3)
    ]
    if bad_step == 0:
        batches[0][0][1, 2] = float("nan")
    else:
        batches[1][1][3] = 2  # two classes: index 2 is out of range
    batches[2] = (torch.randn(4, 5), batches[2][1])  # a wrong shape, later in the request
    before = store.export_state()
    with pytest.raises(InvalidArgumentError) as raised:
        store.train([TrainStep.of([batch], 0.1) for batch in batches])
    assert raised.value.field == field
    assert store.snapshot() == (0, 0, 0)
    for name, value in store.export_state().parameters.items():
        assert torch.equal(value, before.parameters[name]), name


def test_every_update_answers_its_float64_gradient_norm() -> None:
    generator = torch.Generator().manual_seed(6)
    batches = [
        (torch.randn(5, 3, generator=generator), torch.randint(0, 2, (5,), generator=generator))
        for _ in range(4)
    ]
    store = make_store("mlp:3-4-2")
    local = copy.deepcopy(store.model.module)
    result = store.train([TrainStep.of([batch], 0.1) for batch in batches])
    counts = collections.Counter(step.applied for step in result.steps)
    assert counts[True] == 4
    for step, (inputs, targets) in zip(result.steps, batches, strict=True):
        torch.nn.functional.cross_entropy(local(inputs), targets).backward()
        gradients = [p.grad.double().reshape(-1) for p in local.parameters()]  # type: ignore[union-attr]
        expected = torch.linalg.vector_norm(torch.cat(gradients)).item()
        assert step.gradient_norm == pytest.approx(expected, rel=1e-12)
        with torch.no_grad():
            for parameter in local.parameters():
                parameter.sub_(0.1 * parameter.grad)
                parameter.grad.zero_()


def test_the_norm_a_batch_found_is_answered_only_while_grad_is_unchanged() -> None:
    """ComputeGradients keeps the float64 norm its check computed; an update answers it only
    if nothing changed .grad since (another batch by any path, a discard)."""
    data = seed_data(0)
    x, y = data.dataset.inputs, data.dataset.targets
    store = make_store("linear")
    w = data.initial_w.clone().requires_grad_()
    b = data.initial_b.clone().requires_grad_()
    store.set_parameters([("w", w.detach().clone()), ("b", b.detach().clone())])

    def local_norm() -> float:
        return torch.linalg.vector_norm(torch.cat([w.grad, b.grad]).double()).item()  # type: ignore[list-item]

    def local_batch(inputs: torch.Tensor, targets: torch.Tensor) -> None:
        ((w * inputs + b - targets) ** 2).mean().backward()

    # Optimistic, then the checked path (returned gradients), then an output pass.
    store.compute_gradients(x[:10], y[:10])
    local_batch(x[:10], y[:10])
    store.compute_gradients(x[10:20], y[10:20], return_gradients=True)
    local_batch(x[10:20], y[10:20])
    assert store.apply_update(0.0).gradient_norm == local_norm()
    w.grad, b.grad = None, None
    store.compute_gradients(x[20:30], y[20:30])
    local_batch(x[20:30], y[20:30])
    handle = store.compute_outputs(x[30:40]).handle
    outputs = w.detach() * x[30:40] + b.detach()
    seed = 2 * (outputs - y[30:40]) / 10
    store.backward_outputs(handle, seed, 0.0)
    (w * x[30:40] + b).backward(seed)
    assert store.apply_update(0.0).gradient_norm == local_norm()


# Batches for mlp:2-3-1:dropout=0.3 with mse: ordinary, a loss that overflows (finite targets
# of 1e20), and ordinary with a huge learning rate chosen per step below.
def _batch(kind: str, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    inputs = torch.randn(4, 2, generator=generator)
    if kind == "inf loss":
        return inputs, torch.full((4, 1), 1e20)
    return inputs, torch.randn(4, 1, generator=generator)


STEP = st.tuples(
    st.lists(st.sampled_from(["ok"] * 6 + ["inf loss"]), min_size=1, max_size=2),
    st.sampled_from([None, 0.05, 0.05, 0.05, 1e300]),  # None: no update; 1e300 overflows
    st.sampled_from(["sum", "mean"]),
    st.sampled_from([None, None, 0.5]),  # clipping
    st.sampled_from([None, None, 0, 3]),  # expected_version
)


@settings(max_examples=150, deadline=None, derandomize=True, database=None)
@given(
    optimizer=st.sampled_from(["sgd", "adam", "sgd:momentum=0.9"]),
    requests=st.lists(st.lists(STEP, min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_optimistic_runs_answer_and_leave_exactly_what_the_checked_path_does(
    optimizer: str, requests: list[list[tuple[Any, ...]]]
) -> None:
    """The same requests against a store that runs optimistically and one held to the checked
    path: the same results or the same error (type, field, message), and then the same
    parameters, .grad, optimizer state, buffers, counts and RNG state."""
    stores = [make_store("mlp:2-3-1:dropout=0.3", "mse", optimizer) for _ in range(2)]
    stores[1]._optimistic = False  # the checked path, as before optimistic runs
    generator = torch.Generator().manual_seed(9)
    built = []
    for request in requests:
        steps = []
        for kinds, rate, reduction, clip, version in request:
            batches = [_batch(kind, generator) for kind in kinds]
            steps.append(
                TrainStep.of(batches, rate, reduction, version, max_grad_norm=clip)
                if rate is not None
                else TrainStep.of(batches)
            )
        built.append(steps)
    outcomes: list[list[object]] = [[], []]
    for index, store in enumerate(stores):
        torch.manual_seed(21)
        for steps in built:
            try:
                outcomes[index].append(store.train(steps))
            except (FailedPreconditionError, VersionConflictError) as error:
                event(f"refused: {type(error).__name__} {error.field}")
                outcomes[index].append((type(error), error.field, str(error)))
            outcomes[index].append(torch.get_rng_state())
    for mine, theirs in zip(*outcomes, strict=True):
        if isinstance(mine, torch.Tensor):
            assert torch.equal(mine, theirs)
        else:
            assert mine == theirs
    optimistic, checked = (store.export_state() for store in stores)
    assert stores[0].snapshot() == stores[1].snapshot()
    for name, value in checked.parameters.items():
        assert torch.equal(optimistic.parameters[name], value), name
    assert optimistic.gradients.keys() == checked.gradients.keys()
    for name, value in checked.gradients.items():
        assert torch.equal(optimistic.gradients[name], value), name
    for name, value in checked.buffers.items():
        assert torch.equal(optimistic.buffers[name], value), name
    for key, entries in checked.optimizer.get("state", {}).items():
        for field, value in entries.items():
            mine_value = optimistic.optimizer["state"][key][field]
            assert (
                torch.equal(mine_value, value)
                if isinstance(value, torch.Tensor)
                else (mine_value == value)
            ), (key, field)


@settings(max_examples=100, deadline=None, derandomize=True, database=None)
@given(
    optimizer=st.sampled_from(["sgd", "adam"]),
    calls=st.lists(
        st.sampled_from(["ok", "ok", "huge", "inf loss", "apply", "apply", "apply huge rate"]),
        min_size=1,
        max_size=8,
    ),
)
def test_optimistic_compute_gradients_match_the_checked_path(
    optimizer: str, calls: list[str]
) -> None:
    """ComputeGradients and ApplyUpdate on the seed model from w = b = 0: batches whose
    gradient is finite but whose sum with .grad overflows (`huge` twice), losses that are not
    finite, steps that overflow; both stores answer and end alike."""
    stores = [make_store("linear", optimizer=optimizer) for _ in range(2)]
    stores[1]._optimistic = False
    generator = torch.Generator().manual_seed(3)
    outcomes: list[list[object]] = [[], []]
    for index, store in enumerate(stores):
        store.set_parameters([("w", torch.zeros(1)), ("b", torch.zeros(1))])
        for call in calls:
            try:
                if call.startswith("apply"):
                    rate = 1e300 if call == "apply huge rate" else 0.01
                    outcomes[index].append(store.apply_update(rate))
                    continue
                if call == "huge":  # loss 1e38, d/dw -2e38 at w = b = 0: finite, twice not
                    inputs, targets = torch.tensor([[-1e19]]), torch.tensor([[-1e19]])
                elif call == "inf loss":
                    inputs, targets = (
                        torch.rand(3, 1, generator=generator),
                        torch.full((3, 1), 1e20),
                    )
                else:
                    inputs, targets = (torch.rand(3, 1, generator=generator) for _ in range(2))
                outcomes[index].append(store.compute_gradients(inputs, targets))
            except FailedPreconditionError as error:
                event(f"refused: {error.field} {error.reason}")
                outcomes[index].append((error.field, error.reason, str(error)))
        generator.manual_seed(3)
    assert outcomes[0] == outcomes[1]
    optimistic, checked = (store.export_state() for store in stores)
    assert stores[0].snapshot() == stores[1].snapshot()
    for name, value in checked.parameters.items():
        assert torch.equal(optimistic.parameters[name], value), name
    assert optimistic.gradients.keys() == checked.gradients.keys()
    for name, value in checked.gradients.items():
        assert torch.equal(optimistic.gradients[name], value), name


def _tensors_shaped(shape: tuple[int, ...]) -> int:
    gc.collect()
    kinds = (torch.Tensor, torch.nn.Parameter)
    return sum(1 for o in gc.get_objects() if type(o) in kinds and tuple(o.shape) == shape)


@pytest.mark.parametrize(("optimizer", "held"), [("adamw", 4), ("sgd", 4)])
def test_a_run_keeps_a_gradient_copy_only_when_its_requests_find_a_gradient(
    optimizer: str, held: int
) -> None:
    # A weight of a shape nothing else has: [37, 13] (counted from what is alive before).
    alive = _tensors_shaped((37, 13))
    store = make_store("mlp:13-37-5", optimizer=optimizer)
    x, y = torch.randn(8, 13), torch.randint(0, 5, (8,))
    for _ in range(2):
        store.train([TrainStep.of([(x, y)], LEARNING_RATE)])
    # adamw: the weight, exp_avg, exp_avg_sq and the step's rollback copy; torch.optim's
    # zero_grad leaves .grad None, so no request start has a .grad to copy. sgd (the seed's):
    # the weight, its .grad (zeroed, kept), the rollback copy and that .grad's copy.
    assert _tensors_shaped((37, 13)) - alive == held
