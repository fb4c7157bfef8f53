"""One update's optimizer settings: the names an optimizer takes, their ranges, and putting the
values into torch.optim's param groups for that step only (and back, whatever happens).

A name is served when the run's optimizer has its param-group key (SGD: momentum, dampening,
weight_decay; Adam and AdamW: beta1, beta2, eps, weight_decay), so a step with overrides is
exactly torch.optim's step with those `param_group` values.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import MappingProxyType
from typing import Any

from gradserve.errors import InvalidArgumentError

Hyperparameters = Mapping[str, float]
NO_OVERRIDES: Hyperparameters = MappingProxyType({})

# Name -> (param-group key, position in that key's tuple or None).
_KEYS: dict[str, tuple[str, int | None]] = {
    "momentum": ("momentum", None),
    "dampening": ("dampening", None),
    "weight_decay": ("weight_decay", None),
    "eps": ("eps", None),
    "beta1": ("betas", 0),
    "beta2": ("betas", 1),
    "alpha": ("alpha", None),
}

# Name -> (lowest, highest, whether the highest is excluded, what the message says).
_INF = math.inf
_RANGES: dict[str, tuple[float, float, bool, str]] = {
    "momentum": (0.0, _INF, False, ">= 0"),
    "dampening": (0.0, 1.0, False, "in [0, 1]"),
    "weight_decay": (0.0, _INF, False, ">= 0"),
    "eps": (0.0, _INF, False, ">= 0"),
    "beta1": (0.0, 1.0, True, "in [0, 1)"),
    "beta2": (0.0, 1.0, True, "in [0, 1)"),
    "alpha": (0.0, _INF, False, ">= 0"),
}


def field_of(name: str) -> str:
    return f'hyperparameters["{name[:80]}"]'


def served_names(groups: Sequence[Mapping[str, Any]]) -> list[str]:
    """The names these param groups can take (none for the seed's plain SGD)."""
    return [name for name, (key, _) in _KEYS.items() if groups and key in groups[0]]


def check_hyperparameters(
    overrides: Hyperparameters, groups: Sequence[Mapping[str, Any]], description: str
) -> None:
    """InvalidArgumentError naming `hyperparameters["name"]` for the first unknown name or
    value out of range; torch.optim's own rule for nesterov (momentum > 0, no dampening) too."""
    if not overrides:
        return
    served = served_names(groups)
    for name, value in overrides.items():
        if name not in served:
            known = ", ".join(served) or "none: it takes only the learning rate"
            raise InvalidArgumentError(
                f"{field_of(name)}: the run's optimizer {description} has no hyperparameter "
                f"{name[:80]!r}; it has {known}",
                field=field_of(name),
            )
        low, high, high_excluded, expected = _RANGES[name]
        inside = value < high if high_excluded else value <= high
        if not (math.isfinite(value) and value >= low and inside):
            raise InvalidArgumentError(
                f"{field_of(name)}: {value}, expected a finite number {expected}",
                field=field_of(name),
            )
    for group in groups:
        if group.get("nesterov"):
            if overrides.get("momentum", group["momentum"]) <= 0:
                raise InvalidArgumentError(
                    f"{field_of('momentum')}: nesterov momentum needs momentum > 0",
                    field=field_of("momentum"),
                )
            if overrides.get("dampening", group["dampening"]) != 0:
                raise InvalidArgumentError(
                    f"{field_of('dampening')}: nesterov momentum needs dampening 0",
                    field=field_of("dampening"),
                )


@contextmanager
def overridden(groups: Sequence[dict[str, Any]], overrides: Hyperparameters) -> Iterator[None]:
    """The groups take `overrides` (already checked) inside; their own values come back after,
    also when the step raises."""
    if not overrides:
        yield
        return
    keys = {_KEYS[name][0] for name in overrides}
    saved = [{key: group[key] for key in keys} for group in groups]
    for group in groups:
        for name, value in overrides.items():
            key, position = _KEYS[name]
            if position is None:
                group[key] = value
            else:
                pair = list(group[key])
                pair[position] = value
                group[key] = tuple(pair)
    try:
        yield
    finally:
        for group, values in zip(groups, saved, strict=True):
            group.update(values)


# Numbers in a settings vector.
SETTINGS = 1 + len(_KEYS)


def settings_vector(overrides: Hyperparameters, max_grad_norm: float | None) -> list[float]:
    """An update's overrides and clipping as numbers (NaN: not set), in a fixed order, for
    sending to other ranks (server/store/distributed.py); `settings_from_vector` reads it back."""
    return [math.nan if max_grad_norm is None else max_grad_norm] + [
        overrides.get(name, math.nan) for name in _KEYS
    ]


def settings_from_vector(values: Sequence[float]) -> tuple[dict[str, float], float | None]:
    clip, *named = values
    overrides = {
        name: value for name, value in zip(_KEYS, named, strict=True) if not math.isnan(value)
    }
    return overrides, None if math.isnan(clip) else clip
