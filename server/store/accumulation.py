"""One batch's contribution to .grad, in two halves: compute it, then add it.

`batch_gradients` runs the forward pass, the loss and autograd.grad and checks that the loss is
finite; `add_gradients` adds the gradients to .grad with the same arithmetic backward() uses,
after checking that the batch's gradients and their sums with .grad are finite (finite values
can overflow when added), so a refused batch leaves .grad as it was. The store calls both with
its lock held; data parallelism (server/store/distributed.py) replaces only the compute, so the
checks and the adding are these.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

from gradserve.errors import FailedPreconditionError

from ..models.model import LossFunction, Model, all_finite, all_finite_tensors, forward_of

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
    present = [gradient for gradient in gradients if gradient is not None]
    if all_finite_tensors(present):
        return
    for name, gradient in zip(names, gradients, strict=True):
        if gradient is not None and not all_finite(gradient):
            raise FailedPreconditionError(
                f"inputs: the gradient of {name} is not finite for this batch at "
                f"model version {version}; nothing was accumulated",
                field="inputs",
                reason="NOT_FINITE",
            )


# Tensor.backward() ends in this call; its Python layers before it (argument handling, the
# seed gradient's checks, a logging wrapper) cost ~9 us of the seed step's ~45.
_ENGINE_BACKWARD = getattr(
    getattr(torch.autograd.Variable, "_execution_engine", None), "run_backward", None
)


def backward_into_grad(loss: torch.Tensor) -> None:
    """`loss.backward()` for a one-element loss: the same engine call with the same seed
    gradient (ones_like, as torch's _make_grads makes it), so .grad gets the same sums."""
    if _ENGINE_BACKWARD is None or loss.numel() != 1 or not loss.requires_grad:
        torch.autograd.backward([loss])  # torch's own checks and messages
        return
    seed = torch.ones_like(loss, memory_format=torch.preserve_format)
    _ENGINE_BACKWARD(
        (loss,), (seed,), False, False, (), allow_unreachable=True, accumulate_grad=True
    )


def batch_gradients(
    model: Model,
    named: dict[str, torch.nn.Parameter],
    parameters: Sequence[torch.nn.Parameter],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    version: int,
    loss_function: LossFunction | None = None,
) -> tuple[float, Gradients]:
    """Forward, loss (checked) and gradients of one batch; nothing is changed.
    `loss_function`: the batch's own loss (server/models/losses.py); None: the run's."""
    module = model.module
    if not module.training:  # Module.train() walks every submodule: skip it when set
        module.train()
    function = model.loss.function if loss_function is None else loss_function
    loss = function(forward_of(module, inputs, loss_function), targets)
    loss_value = loss.item()
    check_loss(loss_value, version)
    # autograd.grad rather than backward(): the batch's gradients are checked before
    # anything is added (add_gradients checks them with their sums: one reduction for both),
    # and add_gradients is the same arithmetic backward() does.
    return loss_value, torch.autograd.grad(loss, parameters, allow_unused=True)


def add_gradients(
    named: dict[str, torch.nn.Parameter],
    gradients: Gradients,
    weight: float = 1.0,
    *,
    version: int = 0,
) -> None:
    """Add one batch's gradients to .grad, or raise leaving every .grad as it was.

    Two finite values can sum past the dtype's range, so the sums are made apart
    (`grad + added`, the value backward()'s in-place add gives), checked in one reduction,
    and only then put in place of the old .grad tensors."""
    with torch.no_grad():
        summed: list[tuple[str, torch.nn.Parameter]] = []
        old: list[torch.Tensor] = []
        added: list[torch.Tensor] = []
        fresh: list[tuple[torch.nn.Parameter, torch.Tensor]] = []
        for (name, parameter), gradient in zip(named.items(), gradients, strict=True):
            if gradient is None:
                continue
            # A down-weighted (stale) contribution adds weight * gradient.
            contribution = gradient if weight == 1.0 else gradient * weight
            if parameter.grad is None:
                fresh.append((parameter, contribution))
            else:
                summed.append((name, parameter))
                old.append(parameter.grad)
                added.append(contribution)
        sums = list(torch._foreach_add(old, added)) if old else []
        candidates = sums + [contribution for _, contribution in fresh]
        if not all_finite_tensors(candidates):
            # The old .grad is finite: the batch's own gradient, or the sum, is not.
            check_gradients(named, gradients, version)
            _raise_overflow([name for name, _ in summed], sums, version)
        for (_, parameter), total in zip(summed, sums, strict=True):
            parameter.grad = total
        for parameter, contribution in fresh:
            parameter.grad = contribution.clone()


def _raise_overflow(names: Sequence[str], sums: Sequence[torch.Tensor], version: int) -> None:
    culprit = next(
        (name for name, total in zip(names, sums, strict=True) if not all_finite(total)),
        "a parameter (the weighted gradient)",
    )
    raise FailedPreconditionError(
        f"inputs: adding this batch's gradient of {culprit!r} to the accumulated one is not "
        f"finite (it overflows) at model version {version}; nothing was accumulated: the "
        "accumulated gradients are as before; apply or discard them first",
        field="inputs",
    )
