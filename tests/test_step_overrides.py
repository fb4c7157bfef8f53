"""Per-step optimizer settings: hyperparameter overrides and max_grad_norm, over ApplyUpdate and
the Train stream, bitwise equal to clip_grad_norm_ then torch.optim with the same param_group
values; bad names and values are refused naming the field and change nothing."""

from __future__ import annotations

import math

import grpc
import pytest
import torch
from torch import nn
from torch.nn import functional

from gradserve.client.gradient_client import GradientClient, TrainStep
from gradserve.errors import FailedPreconditionError, InvalidArgumentError
from gradserve.types import Reduction
from tests.conftest import ServerFactory
from tests.helpers import Snapshot, apply, compute, field_violations

MLP = "mlp:5-7-3:tanh"
# Per step: (learning rate, reduction, overrides, max_grad_norm). Clipping both sides of the
# threshold (1e-3 always scales these gradients, 1e6 never does), MEAN over 3 batches, and
# steps without overrides, which must use the run's own values again.
SGD_STEPS = [
    (0.1, Reduction.MEAN, {"momentum": 0.5}, None),
    (0.05, Reduction.SUM, {"momentum": 0.99, "dampening": 0.25}, 1e-3),
    (0.05, Reduction.MEAN, {}, None),
    (0.02, Reduction.MEAN, {"weight_decay": 0.1, "momentum": 0.0}, 1e6),
    (0.03, Reduction.SUM, {}, 1e-3),
    (0.03, Reduction.SUM, {}, None),
]
ADAM_STEPS = [
    (0.01, Reduction.MEAN, {"beta1": 0.8, "beta2": 0.95}, 1e-3),
    (0.01, Reduction.SUM, {"eps": 1e-3, "weight_decay": 0.05}, None),
    (0.02, Reduction.MEAN, {}, 1e6),
    (0.01, Reduction.MEAN, {"beta2": 0.5, "eps": 0.0}, 0.05),
    (0.01, Reduction.SUM, {}, None),
]
CASES = [
    ("sgd:momentum=0.9", lambda p: torch.optim.SGD(p, lr=0.0, momentum=0.9), SGD_STEPS),
    ("adam", lambda p: torch.optim.Adam(p, lr=0.0), ADAM_STEPS),
    (
        "adamw:weight_decay=0.02",
        lambda p: torch.optim.AdamW(p, lr=0.0, weight_decay=0.02),
        ADAM_STEPS,
    ),
]
_GROUP_KEYS = {"beta1": ("betas", 0), "beta2": ("betas", 1)}


def _local_step(optimizer, module, lr, reduction, overrides, max_norm, batches):
    """The oracle: backward per batch, MEAN, clip_grad_norm_, the step with those group values."""
    for x, y in batches:
        functional.cross_entropy(module(x), y).backward()
    if reduction is Reduction.MEAN:
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.grad /= len(batches)
    norm, clipped = None, False
    if max_norm is not None:
        total = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
        norm, clipped = float(total), bool(max_norm / (total + 1e-6) < 1)
    group = optimizer.param_groups[0]
    saved = dict(group)
    group["lr"] = lr
    for name, value in overrides.items():
        key, position = _GROUP_KEYS.get(name, (name, None))
        if position is None:
            group[key] = value
        else:
            pair = list(group[key])
            pair[position] = value
            group[key] = tuple(pair)
    optimizer.step()
    group.update({key: value for key, value in saved.items() if key != "lr"})
    optimizer.zero_grad()
    return norm, clipped


def _batches(generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (
            torch.randn(size, 5, generator=generator),
            torch.randint(0, 3, (size,), generator=generator),
        )
        for size in (4, 7, 5)
    ]


@pytest.mark.parametrize("transport", ["unary", "stream"])
@pytest.mark.parametrize(("spec", "make_optimizer", "steps"), CASES, ids=[c[0] for c in CASES])
def test_overrides_and_clipping_are_bitwise_torch(
    make_server: ServerFactory, transport, spec, make_optimizer, steps
) -> None:
    server = make_server(model=MLP, optimizer=spec)
    module = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    generator = torch.Generator().manual_seed(4)
    with GradientClient(server.address, timeout=10) as client:
        module.load_state_dict(client.get_parameters()[1])
        optimizer = make_optimizer(module.parameters())
        own_groups = [dict(group) for group in server.store.optimizer.state_dict()["param_groups"]]
        for lr, reduction, overrides, max_norm in steps:
            batches = _batches(generator)
            if transport == "unary":
                for x, y in batches:
                    client.compute_gradients(x, y)
                result = client.apply_update(
                    lr, reduction=reduction, hyperparameters=overrides, max_grad_norm=max_norm
                )
            else:
                step = TrainStep.of(
                    batches, lr, reduction, hyperparameters=overrides, max_grad_norm=max_norm
                )
                [[result]] = list(client.train_stream([[step]]))
            norm, clipped = _local_step(
                optimizer, module, lr, reduction, overrides, max_norm, batches
            )
            assert result.clipped is clipped
            if max_norm is not None:
                # What clip_grad_norm_ returned, bitwise (its float32 norm, as a double).
                assert result.gradient_norm == norm
                assert clipped is (max_norm != 1e6)
        remote = client.get_parameters()[1]
        for name, parameter in module.named_parameters():
            assert torch.equal(remote[name], parameter.detach()), name
        # The run's own settings are back: the same groups as before the first step.
        groups = server.store.optimizer.state_dict()["param_groups"]
        assert [{k: v for k, v in g.items() if k != "lr"} for g in groups] == [
            {k: v for k, v in g.items() if k != "lr"} for g in own_groups
        ]
    local_state = optimizer.state_dict()["state"]
    server_state = server.store.optimizer.state_dict()["state"]
    for index, values in local_state.items():
        for key, value in values.items():
            assert torch.equal(server_state[index][key], value), (index, key)


def test_clipping_works_for_the_seed_sgd(make_server: ServerFactory) -> None:
    server = make_server()
    generator = torch.Generator().manual_seed(3)
    x, y = torch.rand(10, 1, generator=generator), torch.rand(10, 1, generator=generator)
    with GradientClient(server.address, timeout=10) as client:
        w, b = (p.clone() for p in client.get_parameters(["w", "b"])[1].values())
        client.compute_gradients(x, y)
        result = client.apply_update(0.1, max_grad_norm=1e-2)
        w_local, b_local = w.requires_grad_(), b.requires_grad_()
        ((w_local * x + b_local - y) ** 2).mean().backward()
        total = torch.nn.utils.clip_grad_norm_([w_local, b_local], 1e-2)
        with torch.no_grad():
            w_local -= 0.1 * w_local.grad
            b_local -= 0.1 * b_local.grad
        remote = client.get_parameters(["w", "b"])[1]
        assert result.clipped and result.gradient_norm == float(total)
        assert torch.equal(remote["w"], w_local) and torch.equal(remote["b"], b_local)


BAD = [
    ("sgd", {"momentum": 0.9}, None, 'hyperparameters["momentum"]'),
    ("sgd:momentum=0.9", {"beta1": 0.9}, None, 'hyperparameters["beta1"]'),
    ("sgd:momentum=0.9", {"momentum": -0.1}, None, 'hyperparameters["momentum"]'),
    ("sgd:momentum=0.9", {"momentum": math.nan}, None, 'hyperparameters["momentum"]'),
    ("sgd:momentum=0.9,nesterov=true", {"momentum": 0.0}, None, 'hyperparameters["momentum"]'),
    ("adam", {"beta1": 1.0}, None, 'hyperparameters["beta1"]'),
    ("adam", {"beta2": -0.5}, None, 'hyperparameters["beta2"]'),
    ("adam", {"eps": -1e-8}, None, 'hyperparameters["eps"]'),
    ("adam", {"weight_decay": math.inf}, None, 'hyperparameters["weight_decay"]'),
    ("adam", {"momentum": 0.9}, None, 'hyperparameters["momentum"]'),
    ("adam", {}, 0.0, "max_grad_norm"),
    ("sgd", {}, -1.0, "max_grad_norm"),
    ("sgd", {}, math.nan, "max_grad_norm"),
]


@pytest.mark.parametrize(("spec", "overrides", "max_norm", "field"), BAD)
def test_bad_settings_are_refused_naming_the_field_and_change_nothing(
    make_server: ServerFactory, make_stub, spec, overrides, max_norm, field
) -> None:
    server = make_server(model=MLP, optimizer=spec)
    stub = make_stub(server)
    generator = torch.Generator().manual_seed(1)
    for x, y in _batches(generator):
        compute(stub, x, y)
    apply(stub, 0.01)  # the optimizer has state
    x, y = _batches(generator)[0]
    compute(stub, x, y)
    before = Snapshot.take(server, stub)
    state = server.store.export_state()
    fields = {"hyperparameters": overrides}
    if max_norm is not None:
        fields["max_grad_norm"] = max_norm
    with pytest.raises(grpc.RpcError) as raised:
        apply(stub, 0.01, **fields)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(raised.value) == [field]
    assert field in raised.value.details()
    with GradientClient(server.address, timeout=10) as client:
        step = TrainStep.of([(x, y)], 0.01, hyperparameters=overrides, max_grad_norm=max_norm)
        with pytest.raises(InvalidArgumentError) as refused:
            list(client.train_stream([[step]]))
        assert refused.value.field == f"steps[0].{field}"
    Snapshot.take(server, stub).assert_same(before)
    _assert_same(state.optimizer, server.store.export_state().optimizer)


def _assert_same(before: object, after: object) -> None:
    if isinstance(before, torch.Tensor):
        assert isinstance(after, torch.Tensor) and torch.equal(before, after)
    elif isinstance(before, dict):
        assert isinstance(after, dict) and before.keys() == after.keys()
        for key, value in before.items():
            _assert_same(value, after[key])
    elif isinstance(before, list | tuple):
        assert isinstance(after, list | tuple) and len(before) == len(after)
        for one, other in zip(before, after, strict=True):
            _assert_same(one, other)
    else:
        assert before == after


def test_a_refused_clipped_step_puts_the_accumulated_gradients_back(
    make_server: ServerFactory, make_stub
) -> None:
    server = make_server(model=MLP, optimizer="sgd:momentum=0.9")
    stub = make_stub(server)
    for x, y in _batches(torch.Generator().manual_seed(6)):
        compute(stub, x, y)
    before = Snapshot.take(server, stub)
    for reduction in (Reduction.SUM, Reduction.MEAN):
        with pytest.raises(FailedPreconditionError, match="nothing was applied"):
            server.store.apply_update(
                1e300, reduction=reduction, hyperparameters={"momentum": 0.1}, max_grad_norm=1e-3
            )
        Snapshot.take(server, stub).assert_same(before)
        assert server.store.optimizer.state_dict()["param_groups"][0]["momentum"] == 0.9


def test_a_sync_round_takes_the_closing_calls_settings(make_server: ServerFactory) -> None:
    server = make_server(mode="sync", sync_contributions=1, optimizer="sgd:momentum=0.9")
    twin = make_server(optimizer="sgd:momentum=0.9")
    x, y = torch.rand(8, 1), torch.rand(8, 1)
    with (
        GradientClient(server.address, timeout=10) as client,
        GradientClient(twin.address, timeout=10) as reference,
    ):
        reference.set_parameters(client.get_parameters()[1])
        for each in (client, reference):
            each.compute_gradients(x, y)
        settings = {"hyperparameters": {"momentum": 0.3}, "max_grad_norm": 1e-3}
        synced = client.apply_update(0.1, **settings)
        direct = reference.apply_update(0.1, reduction=Reduction.MEAN, **settings)
        assert (synced.clipped, synced.gradient_norm) == (direct.clipped, direct.gradient_norm)
        remote, local = client.get_parameters()[1], reference.get_parameters()[1]
        assert all(torch.equal(remote[name], local[name]) for name in local)
