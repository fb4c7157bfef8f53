"""`delegated`: a GradientClient method that hands its call to one of the client's call groups.

GradientClient offers every call group's methods as its own (tests/test_client_composition.py).
Where the client's method only passes its arguments on, writing it out restated each signature
twice; `delegated(group, method)` makes that method from the group's: the same signature and
docstring (functools.update_wrapper), calling the group object that the client holds under `group`.
The client still composes its groups (no mixin): only the forwarding is generated.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Concatenate, ParamSpec, TypeVar

GroupT = TypeVar("GroupT")
P = ParamSpec("P")
R = TypeVar("R")


def delegated(
    group: str, method: Callable[Concatenate[GroupT, P], R]
) -> Callable[Concatenate[Any, P], R]:
    """A method whose call is `getattr(self, group).<method>(...)`."""
    name = method.__name__

    def forward(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = getattr(getattr(self, group), name)(*args, **kwargs)
        return result

    functools.update_wrapper(forward, method)
    return forward
