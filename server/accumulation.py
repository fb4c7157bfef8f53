"""One batch's contribution to .grad, in two halves: compute it, then add it.

`batch_gradients` runs the forward pass, the loss and autograd.grad and checks that the loss
and every gradient are finite; `add_gradients` adds them to .grad with the same arithmetic
backward() uses. The store calls both with its lock held; data parallelism
(server/distributed.py) replaces only the compute, so the checks and the adding are these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from gradserve.errors import FailedPreconditionError
from gradserve.server.models import Model, all_finite

Gradients = tuple[torch.Tensor | None, ...]


def check_loss(loss_value: float, version: int) -> None:
    if not math.isfinite(loss_value):
        raise FailedPreconditionError(
            f"inputs: the loss is {loss_value} for this batch at model version "
            f"{version}; nothing was accumulated",
            field="inputs",
            reason="NOT_FINITE",
        )


def check_gradients(names: Iterable[str], gradients: Gradients, version: int) -> None:
    for name, gradient in zip(names, gradients, strict=True):
        if gradient is not None and not all_finite(gradient):
            raise FailedPreconditionError(
                f"inputs: the gradient of {name} is not finite for this batch at "
                f"model version {version}; nothing was accumulated",
                field="inputs",
                reason="NOT_FINITE",
            )


def batch_gradients(
    model: Model,
    named: dict[str, torch.nn.Parameter],
    parameters: Sequence[torch.nn.Parameter],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    version: int,
) -> tuple[float, Gradients]:
    """Forward, loss and gradients of one batch, checked; nothing is changed."""
    module = model.module
    if not module.training:  # Module.train() walks every submodule: skip it when set
        module.train()
    loss = model.loss.function(module(inputs), targets)
    loss_value = loss.item()
    check_loss(loss_value, version)
    # autograd.grad rather than backward(): the batch's gradients are checked before
    # anything is added, and add_gradients is the same arithmetic backward() does.
    gradients = torch.autograd.grad(loss, parameters, allow_unused=True)
    check_gradients(named, gradients, version)
    return loss_value, gradients


def add_gradients(
    parameters: Sequence[torch.nn.Parameter], gradients: Gradients, weight: float = 1.0
) -> None:
    with torch.no_grad():
        for parameter, gradient in zip(parameters, gradients, strict=True):
            if gradient is None:
                continue
            # A down-weighted (stale) contribution adds weight * gradient.
            added = gradient if weight == 1.0 else gradient * weight
            if parameter.grad is None:
                parameter.grad = added.clone()
            else:
                parameter.grad += added
