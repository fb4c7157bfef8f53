"""Parameter groups of an optimizer spec: `;group=GLOB:key=value,...` parts, matched by name.

`adamw:weight_decay=0.01;group=*.bias:weight_decay=0;group=0.*:frozen=true` gives the
parameters whose names match `*.bias` their own weight decay and freezes those of layer 0. A
parameter joins the first group whose glob (fnmatch) matches its name; the ones no group
matches form the default group, which comes first (left out when empty). A group takes the
optimizer's own options plus `lr_scale` (its rate is the step's times this, 1 by default) and
`frozen=true` (lr_scale 0: torch.optim's arithmetic with a rate of 0 leaves a parameter as it
was). docs/models-and-data.md shows the torch.optim twin.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gradserve.errors import InvalidArgumentError

# A group's rate is the step's times its group["lr_scale"] (optimizers.py reads it).
LR_SCALE = "lr_scale"
# At most this many groups: each is a param group the optimizer loops over every step.
MAX_GROUPS = 64

Parsers = Mapping[str, Callable[[str], Any]]


@dataclass(frozen=True)
class GroupSpec:
    pattern: str
    options: dict[str, Any]
    lr_scale: float


def _bad(message: str) -> InvalidArgumentError:
    return InvalidArgumentError(f"optimizer: {message}", field="optimizer")


def parse_options(name: str, text: str, parsers: Parsers) -> dict[str, Any]:
    """`key=value,...` of optimizer `name`, each value through its parser."""
    options: dict[str, Any] = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        parser = parsers.get(key)
        if parser is None:
            raise _bad(f"{name} has no option {key!r}; known: {', '.join(parsers)}")
        try:
            options[key] = parser(value)
        except ValueError:
            raise _bad(f"bad value {value!r} for {name} option {key!r}") from None
    return options


def parse_groups(name: str, parts: Sequence[str], parsers: Parsers) -> list[GroupSpec]:
    """The `group=GLOB:options` parts after the spec's first `;`."""
    if len(parts) > MAX_GROUPS:
        raise _bad(f"at most {MAX_GROUPS} groups, got {len(parts)}")
    group_parsers = {**parsers, LR_SCALE: float, "frozen": _frozen}
    groups = []
    for part in parts:
        head, _, text = part.partition(":")
        key, _, pattern = head.partition("=")
        if key != "group" or not pattern:
            raise _bad(f"expected group=GLOB[:key=value,...] after ';', got {part!r}")
        options = parse_options(name, text, group_parsers)
        scale = options.pop(LR_SCALE, 1.0)
        if options.pop("frozen", False):
            scale = 0.0
        if not (scale >= 0.0 and scale < float("inf")):
            raise _bad(f"group {pattern!r}: lr_scale must be a finite number >= 0")
        groups.append(GroupSpec(pattern, options, scale))
    return groups


def _frozen(text: str) -> bool:
    if text.lower() not in ("true", "1", "false", "0"):
        raise ValueError(text)
    return text.lower() in ("true", "1")


def param_groups(
    named: Sequence[tuple[str, torch.nn.Parameter]], groups: Sequence[GroupSpec]
) -> list[dict[str, Any]]:
    """torch.optim's param groups: the default one (unless empty), then each spec's in order;
    a group that matches no parameter is an error (a glob with a typo would do nothing)."""
    members: list[list[torch.nn.Parameter]] = [[] for _ in groups]
    rest: list[torch.nn.Parameter] = []
    for name, parameter in named:
        index = next((i for i, g in enumerate(groups) if fnmatch.fnmatchcase(name, g.pattern)), -1)
        (members[index] if index >= 0 else rest).append(parameter)
    for group, params in zip(groups, members, strict=True):
        if not params:
            known = ", ".join(name for name, _ in named)
            raise _bad(f"group {group.pattern!r} matches no parameter; parameters: {known[:400]}")
    built = [{"params": rest, LR_SCALE: 1.0}] if rest else []
    built += [
        {"params": params, **group.options, LR_SCALE: group.lr_scale}
        for group, params in zip(groups, members, strict=True)
    ]
    return built
