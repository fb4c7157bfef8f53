"""Optimizers the server steps with, picked by a spec: `sgd` (the seed's arithmetic) or torch.optim.

Spec: `name[:key=value,...]`, e.g. `sgd`, `sgd:momentum=0.9,nesterov=true`, `adam:betas=0.9/0.99`.
The learning rate is not part of the spec: every ApplyUpdate brings its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, cast

import torch

from gradserve.errors import InvalidArgumentError


class Optimizer(Protocol):
    description: str

    def step(self, learning_rate: float) -> None: ...

    def zero_grad(self) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class SeedSGD:
    """Plain SGD written as the seed loop writes it, so remote results are bitwise local ones."""

    description = "sgd"

    def __init__(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        self._parameters = list(parameters)

    def step(self, learning_rate: float) -> None:
        with torch.no_grad():
            for parameter in self._parameters:
                if parameter.grad is not None:
                    # `w -= lr * w.grad`, the seed's own expression (-= is sub_).
                    parameter.sub_(learning_rate * parameter.grad)

    def zero_grad(self) -> None:
        for parameter in self._parameters:
            if parameter.grad is not None:
                parameter.grad.zero_()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class TorchOptimizer:
    """A torch.optim optimizer whose param groups take each update's learning rate."""

    def __init__(self, optimizer: torch.optim.Optimizer, description: str) -> None:
        self._optimizer = optimizer
        self.description = description

    def step(self, learning_rate: float) -> None:
        for group in self._optimizer.param_groups:
            group["lr"] = learning_rate
        self._optimizer.step()

    def zero_grad(self) -> None:
        # set_to_none, torch.optim's default: a local `optimizer.zero_grad()` does the same.
        self._optimizer.zero_grad()

    def state_dict(self) -> dict[str, Any]:
        return self._optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._optimizer.load_state_dict(state)


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


def build_optimizer(spec: str, parameters: Sequence[torch.nn.Parameter]) -> Optimizer:
    name, _, args = spec.partition(":")
    if name not in _OPTIONS:
        raise InvalidArgumentError(
            f"optimizer: unknown optimizer {name!r}; known: {', '.join(_OPTIONS)}",
            field="optimizer",
        )
    if name == "sgd" and not args:
        return SeedSGD(parameters)
    optimizer_class, parsers = _OPTIONS[name]
    options: dict[str, Any] = {}
    for item in filter(None, args.split(",")):
        key, _, value = item.partition("=")
        parser = parsers.get(key)
        if parser is None:
            raise InvalidArgumentError(
                f"optimizer: {name} has no option {key!r}; known: {', '.join(parsers)}",
                field="optimizer",
            )
        try:
            options[key] = parser(value)
        except ValueError:
            raise InvalidArgumentError(
                f"optimizer: bad value {value!r} for {name} option {key!r}", field="optimizer"
            ) from None
    try:
        optimizer = cast(Any, optimizer_class)(list(parameters), lr=0.0, **options)
    except ValueError as error:
        raise InvalidArgumentError(f"optimizer: {error}", field="optimizer") from None
    settings = ",".join(f"{key}={value}" for key, value in sorted(options.items()))
    return TorchOptimizer(optimizer, f"{name}({settings})")
