"""Optimizers the server steps with, picked by a spec: `sgd` (the seed's arithmetic) or torch.optim.

Spec: `name[:key=value,...]`, e.g. `sgd`, `sgd:momentum=0.9,nesterov=true`, `adam:betas=0.9/0.99`,
then optionally parameter groups `;group=GLOB:key=value,...` (parameter_groups.py).
The learning rate is not part of the spec: every ApplyUpdate brings its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch

from gradserve.errors import InvalidArgumentError

from .hyperparameters import (
    NO_OVERRIDES,
    Hyperparameters,
    check_hyperparameters,
    overridden,
)
from .parameter_groups import LR_SCALE, param_groups, parse_groups, parse_options


class Optimizer(Protocol):
    description: str

    # `hyperparameters`: this step's overrides, checked first by check_hyperparameters
    # (InvalidArgumentError naming the name); the optimizer's own values are back afterwards.
    def step(
        self, learning_rate: float, hyperparameters: Hyperparameters = NO_OVERRIDES
    ) -> None: ...

    def check_hyperparameters(self, hyperparameters: Hyperparameters) -> None: ...

    def zero_grad(self) -> None: ...

    # step() then zero_grad(), free to use .grad as scratch in between (it is cleared after):
    # for callers that can put .grad back themselves (optimistic_runs.py).
    def step_and_zero_grad(
        self, learning_rate: float, hyperparameters: Hyperparameters = NO_OVERRIDES
    ) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...

    # What step() changes besides the parameters, for undoing a step whose result is not
    # finite: `saved_state` copies it, `restore_saved_state` puts the copy back exactly, and
    # `state_tensors` lists the live tensors the store checks after a step.
    def saved_state(self) -> object: ...

    def restore_saved_state(self, saved: object) -> None: ...

    def state_tensors(self) -> list[torch.Tensor]: ...


_ALREADY_NO_GRAD = contextlib.nullcontext()


class SeedSGD:
    """Plain SGD written as the seed loop writes it, so remote results are bitwise local ones."""

    description = "sgd"

    def __init__(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        self._parameters: list[torch.Tensor] = list(parameters)

    def step(self, learning_rate: float, hyperparameters: Hyperparameters = NO_OVERRIDES) -> None:
        stepped: list[torch.Tensor] = [p for p in self._parameters if p.grad is not None]
        if not stepped:
            return
        gradients = [g for p in stepped if (g := p.grad) is not None]
        # StepRollback steps under no_grad() already: entering it again costs ~1.5 us.
        with torch.no_grad() if torch.is_grad_enabled() else _ALREADY_NO_GRAD:
            # `w -= lr * w.grad`, the seed's own expression (-= is sub_), for all parameters
            # in two calls: the multi-tensor ops do the same per-tensor arithmetic.
            scaled = torch._foreach_mul(gradients, learning_rate)
            torch._foreach_sub_(stepped, scaled)

    def step_and_zero_grad(
        self, learning_rate: float, hyperparameters: Hyperparameters = NO_OVERRIDES
    ) -> None:
        stepped: list[torch.Tensor] = [p for p in self._parameters if p.grad is not None]
        if not stepped:
            return
        gradients = [g for p in stepped if (g := p.grad) is not None]
        with torch.no_grad():
            # lr * w.grad into .grad itself (the same product, without allocating), then
            # w -= it, then zero: .grad ends as zero_grad() leaves it.
            torch._foreach_mul_(gradients, learning_rate)
            torch._foreach_sub_(stepped, gradients)
            torch._foreach_zero_(gradients)

    def check_hyperparameters(self, hyperparameters: Hyperparameters) -> None:
        # No param groups: every name is unknown (a spec with options serves torch.optim.SGD).
        check_hyperparameters(hyperparameters, (), "sgd (the seed's w -= lr * w.grad)")

    def zero_grad(self) -> None:
        gradients = [p.grad for p in self._parameters if p.grad is not None]
        if gradients:
            torch._foreach_zero_(gradients)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    # Plain SGD has no state: a step changes the parameters only.
    def saved_state(self) -> object:
        return None

    def restore_saved_state(self, saved: object) -> None:
        return None

    def state_tensors(self) -> list[torch.Tensor]:
        return []


class TorchOptimizer:
    """A torch.optim optimizer whose param groups take each update's learning rate."""

    def __init__(self, optimizer: torch.optim.Optimizer, description: str) -> None:
        self._optimizer = optimizer
        self.description = description

    def step(self, learning_rate: float, hyperparameters: Hyperparameters = NO_OVERRIDES) -> None:
        for group in self._optimizer.param_groups:
            # A parameter group's own scale (1.0 without groups: the product is the rate).
            group["lr"] = learning_rate * group.get(LR_SCALE, 1.0)
        with overridden(self._optimizer.param_groups, hyperparameters):
            self._optimizer.step()

    def step_and_zero_grad(
        self, learning_rate: float, hyperparameters: Hyperparameters = NO_OVERRIDES
    ) -> None:
        self.step(learning_rate, hyperparameters)
        self.zero_grad()

    def check_hyperparameters(self, hyperparameters: Hyperparameters) -> None:
        check_hyperparameters(hyperparameters, self._optimizer.param_groups, self.description)

    def zero_grad(self) -> None:
        # set_to_none, torch.optim's default: a local `optimizer.zero_grad()` does the same.
        self._optimizer.zero_grad()

    def state_dict(self) -> dict[str, Any]:
        return self._optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state)

    def saved_state(self) -> object:
        """Copies of every parameter's state (momentum, moments, step counts) and the groups'
        learning rates; parameters without state yet (before their first step) have none."""
        state = {
            parameter: {
                key: value.clone() if isinstance(value, torch.Tensor) else value
                for key, value in entries.items()
            }
            for parameter, entries in self._optimizer.state.items()
        }
        return state, [group["lr"] for group in self._optimizer.param_groups]

    def restore_saved_state(self, saved: object) -> None:
        state, rates = cast(tuple[dict[torch.Tensor, dict[str, Any]], list[float]], saved)
        # The copies become the state: the step's own entries, new ones included, are dropped.
        self._optimizer.state.clear()
        self._optimizer.state.update(state)
        for group, rate in zip(self._optimizer.param_groups, rates, strict=True):
            group["lr"] = rate

    def state_tensors(self) -> list[torch.Tensor]:
        return [
            value
            for entries in self._optimizer.state.values()
            for value in entries.values()
            if isinstance(value, torch.Tensor)
        ]


# Options each torch.optim class accepts from a spec, with their parsers.
def _parse_bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise ValueError(text)


def _parse_pair(text: str) -> tuple[float, float]:
    first, second = text.split("/")
    return float(first), float(second)


_OPTIONS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (
        torch.optim.SGD,
        {"momentum": float, "dampening": float, "weight_decay": float, "nesterov": _parse_bool},
    ),
    "adam": (
        torch.optim.Adam,
        {"betas": _parse_pair, "eps": float, "weight_decay": float, "amsgrad": _parse_bool},
    ),
    "adamw": (
        torch.optim.AdamW,
        {"betas": _parse_pair, "eps": float, "weight_decay": float, "amsgrad": _parse_bool},
    ),
}

OPTIMIZER_NAMES = tuple(_OPTIONS)


def state_slots(spec: str) -> int:
    """Parameter-sized tensors the optimizer keeps per parameter once it has stepped: SGD's
    momentum buffer (when some group has momentum), Adam's two moments (three with amsgrad).
    What a run's budget counts beside its parameters, known before anything is built."""
    first, *group_parts = spec.split(";")
    name, _, args = first.partition(":")
    if name not in _OPTIONS:
        raise InvalidArgumentError(
            f"optimizer: unknown optimizer {name!r}; known: {', '.join(_OPTIONS)}",
            field="optimizer",
        )
    if name == "sgd" and not args and not group_parts:
        return 0
    parsers = _OPTIONS[name][1]
    groups = parse_groups(name, group_parts, parsers)
    options = [parse_options(name, args, parsers), *(group.options for group in groups)]
    if name == "sgd":
        return 1 if any(chosen.get("momentum", 0.0) for chosen in options) else 0
    return 3 if any(chosen.get("amsgrad", False) for chosen in options) else 2


def build_optimizer(
    spec: str,
    parameters: Sequence[torch.nn.Parameter],
    names: Sequence[str] | None = None,
) -> Optimizer:
    """`names`: the parameters' names, which a spec's groups match (needed with groups)."""
    first, *group_parts = spec.split(";")
    name, _, args = first.partition(":")
    if name not in _OPTIONS:
        raise InvalidArgumentError(
            f"optimizer: unknown optimizer {name!r}; known: {', '.join(_OPTIONS)}",
            field="optimizer",
        )
    if name == "sgd" and not args and not group_parts:
        return SeedSGD(parameters)
    optimizer_class, parsers = _OPTIONS[name]
    options = parse_options(name, args, parsers)
    groups = parse_groups(name, group_parts, parsers)
    if groups and names is None:
        raise InvalidArgumentError("optimizer: groups need parameter names", field="optimizer")
    chosen: Any = list(parameters)
    if groups:
        chosen = param_groups(list(zip(names or (), chosen, strict=True)), groups)
    try:
        optimizer = cast(Any, optimizer_class)(chosen, lr=0.0, **options)
    except ValueError as error:
        raise InvalidArgumentError(f"optimizer: {error}", field="optimizer") from None
    settings = ",".join(f"{key}={value}" for key, value in sorted(options.items()))
    described = "".join(
        f";group={g.pattern}:"
        + ",".join(f"{k}={v}" for k, v in sorted(g.options.items()))
        + f",lr_scale={g.lr_scale:g}"
        for g in groups
    )
    return TorchOptimizer(optimizer, f"{name}({settings}){described}")
