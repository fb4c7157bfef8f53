"""Every server optimizer, k steps through the service, bitwise equal to torch.optim run locally.

tests/test_gradients.py already covers momentum, momentum+nesterov+weight decay, adam, adam with
betas+amsgrad and adamw with weight decay on an MLP with SUM reduction. Here: the seed's sgd
against torch.optim.SGD, the options not covered there, other models (cnn, batch norm), MEAN
reduction over unequal batches, and the optimizer state itself (what checkpoints save).
"""

from __future__ import annotations

import pytest
import torch
from helpers import apply, compute, get_parameters
from torch import nn
from torch.nn import functional

from gradserve.v1 import gradserve_pb2 as pb

MLP = "mlp:5-7-3:tanh"
CNN_BN = "cnn:1x4x4-3:channels=4:batchnorm"


def local_module(spec: str) -> nn.Module:
    if spec == MLP:
        return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 3),
    )


def make_batch(spec: str, size: int, generator: torch.Generator):
    shape = (5,) if spec == MLP else (1, 4, 4)
    return torch.randn(size, *shape, generator=generator), torch.randint(
        0, 3, (size,), generator=generator
    )


class SeedArithmetic:
    """The seed loop's update, `p -= lr * p.grad`, behind torch.optim's interface. It is not
    bitwise torch.optim.SGD (which computes p + (-lr) * grad in one kernel): `sgd` is the seed's,
    `sgd:momentum=0` is torch.optim.SGD's."""

    def __init__(self, parameters) -> None:
        self.parameters = list(parameters)
        self.param_groups = [{"lr": 0.0}]

    def step(self) -> None:
        with torch.no_grad():
            for parameter in self.parameters:
                parameter -= self.param_groups[0]["lr"] * parameter.grad  # noqa: PLW2901

    def zero_grad(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

    def state_dict(self) -> dict:
        return {"state": {}}


OPTIMIZERS = [
    ("sgd", SeedArithmetic),
    ("sgd:momentum=0", lambda p: torch.optim.SGD(p, lr=0.0)),
    ("sgd:weight_decay=0.05", lambda p: torch.optim.SGD(p, lr=0.0, weight_decay=0.05)),
    (
        "sgd:momentum=0.8,dampening=0.1",
        lambda p: torch.optim.SGD(p, lr=0.0, momentum=0.8, dampening=0.1),
    ),
    (
        "sgd:momentum=0.9,nesterov=true",
        lambda p: torch.optim.SGD(p, lr=0.0, momentum=0.9, nesterov=True),
    ),
    (
        "adam:weight_decay=0.01,eps=1e-6",
        lambda p: torch.optim.Adam(p, lr=0.0, weight_decay=0.01, eps=1e-6),
    ),
    ("adamw", lambda p: torch.optim.AdamW(p, lr=0.0)),
    (
        "adamw:betas=0.85/0.995,amsgrad=true,weight_decay=0.02",
        lambda p: torch.optim.AdamW(
            p, lr=0.0, betas=(0.85, 0.995), amsgrad=True, weight_decay=0.02
        ),
    ),
]


@pytest.mark.parametrize("spec", [MLP, CNN_BN])
@pytest.mark.parametrize(
    ("optimizer_spec", "make_optimizer"), OPTIMIZERS, ids=[spec for spec, _ in OPTIMIZERS]
)
def test_k_steps_are_bitwise_local_torch_optim(
    make_server, make_stub, spec, optimizer_spec, make_optimizer
) -> None:
    server = make_server(model=spec, optimizer=optimizer_spec)
    stub = make_stub(server)
    module = local_module(spec)
    module.load_state_dict(get_parameters(stub), strict=False)
    module.train()
    optimizer = make_optimizer(module.parameters())
    generator = torch.Generator().manual_seed(9)
    for step, lr in enumerate([0.1, 0.03, 0.0, 0.05, 0.01, 0.02]):
        # Unequal batches and MEAN on odd steps: the update divides .grad by the batch count.
        reduction = pb.REDUCTION_MEAN if step % 2 else pb.REDUCTION_SUM
        sizes = (4, 7, 5)
        for size in sizes:
            x, y = make_batch(spec, size, generator)
            compute(stub, x, y)
            functional.cross_entropy(module(x), y).backward()
        assert apply(stub, lr, reduction=reduction).model_version == step + 1
        if reduction == pb.REDUCTION_MEAN:
            with torch.no_grad():
                for parameter in module.parameters():
                    parameter.grad /= len(sizes)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad()
    remote = get_parameters(stub)
    for name, parameter in module.named_parameters():
        assert torch.equal(remote[name], parameter.detach()), name
    # The optimizer's own state (momentum buffers, Adam moments, step counts) matches too.
    local_state = optimizer.state_dict()["state"]
    server_state = server.store.optimizer.state_dict().get("state", {})
    assert server_state.keys() == local_state.keys()
    for index, values in local_state.items():
        for key, value in values.items():
            other = server_state[index][key]
            if isinstance(value, torch.Tensor):
                assert torch.equal(other, value), (index, key)
            else:
                assert other == value, (index, key)
