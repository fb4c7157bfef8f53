"""The checks that guard reading and replacing parameters and buffers: names, dtypes, shapes,
values.

`named` maps every tensor a call may name: the parameters, then (for GetParameters,
SetParameters and their streams) the buffers. Each check raises InvalidArgumentError naming the
field at fault before anything is touched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

from gradserve.codec import encoded_tensor_bytes
from gradserve.errors import InvalidArgumentError, ResourceExhaustedError

from ..models.model import all_finite
from .store_state import StoreState


def check_names(
    named: Mapping[str, torch.Tensor],
    names: Sequence[str],
    max_bytes: int | None = None,
    *,
    size_field: str = "names",
    default: Sequence[str] | None = None,
) -> list[str]:
    """The tensors to read (`default`, else all of `named`, when `names` is empty): each known
    and asked for once, and with `max_bytes` their encoded size within it, all from shapes and
    dtypes, before any read."""
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name not in named:
            raise InvalidArgumentError(
                f"names[{index}]: no parameter or buffer {name!r}; the model has "
                f"{', '.join(named)}",
                field=f"names[{index}]",
            )
        if name in seen:
            raise InvalidArgumentError(
                f"names[{index}]: {name!r} is asked for twice (first as names[{seen[name]}])",
                field=f"names[{index}]",
            )
        seen[name] = index
    selected = list(names) or list(named if default is None else default)
    if max_bytes is not None:
        size = sum(
            encoded_tensor_bytes(name, named[name].dtype, named[name].shape) for name in selected
        )
        if size > max_bytes:
            instead = (
                "ask for fewer names or use StreamParameters"
                if size_field == "names"
                else "nothing was accumulated; send it without return_gradients"
            )
            raise ResourceExhaustedError(
                f"{size_field}: the response would hold about {size} bytes of tensors, over "
                f"the server's message limit of {max_bytes} (max_message_bytes): {instead}",
                field=size_field,
            )
    return selected


def check_values(
    named: Mapping[str, torch.Tensor], values: Sequence[tuple[str, torch.Tensor]]
) -> None:
    if not values:
        raise InvalidArgumentError("parameters: no parameters given", field="parameters")
    seen: set[str] = set()
    for index, (name, value) in enumerate(values):
        field = f"parameters[{index}]"
        parameter = named.get(name)
        if parameter is None:
            raise InvalidArgumentError(
                f"{field}.name: no parameter or buffer {name!r}; the model has {', '.join(named)}",
                field=f"{field}.name",
            )
        if name in seen:
            raise InvalidArgumentError(
                f"{field}.name: {name!r} is given twice", field=f"{field}.name"
            )
        seen.add(name)
        if value.dtype != parameter.dtype:
            raise InvalidArgumentError(
                f"{field}.dtype: {value.dtype} for {name!r}, expected {parameter.dtype}",
                field=f"{field}.dtype",
            )
        if value.shape != parameter.shape:
            raise InvalidArgumentError(
                f"{field}.shape: {list(value.shape)} for {name!r}, "
                f"expected {list(parameter.shape)}",
                field=f"{field}.shape",
            )
        if value.is_floating_point() and not _all_finite(value):
            raise InvalidArgumentError(
                f"{field}.data: {name!r} contains NaN or Inf", field=f"{field}.data"
            )
        # Batch norm counts the batches it has seen; a negative count would skew its momentum.
        if name.rsplit(".", 1)[-1] == "num_batches_tracked" and bool((value < 0).any()):
            raise InvalidArgumentError(
                f"{field}.data: {name!r} is a batch count and must be >= 0",
                field=f"{field}.data",
            )


def _all_finite(value: torch.Tensor) -> bool:
    """models.all_finite, with a sum first: a sum over a NaN or an Inf is never finite, so a
    finite sum settles it in one fast pass (134 MB: 4 ms against the float64 norm's 110 ms);
    only a sum that overflowed (huge but finite values) takes the exact check."""
    accumulate = torch.float64 if value.dtype == torch.float64 else torch.float32
    if math.isfinite(value.sum(dtype=accumulate).item()):
        return True
    return all_finite(value)


def check_state(named: Mapping[str, torch.Tensor], state: StoreState) -> None:
    """A checkpoint's parameters are exactly the model's, with their dtypes and shapes."""
    for name, value in state.parameters.items():
        parameter = named.get(name)
        if parameter is None or value.shape != parameter.shape or value.dtype != parameter.dtype:
            raise InvalidArgumentError(
                f"checkpoint: parameter {name!r} {value.dtype} {list(value.shape)} does not "
                "match the model",
                field="checkpoint",
            )
    if set(state.parameters) != set(named):
        raise InvalidArgumentError(
            f"checkpoint: parameters {sorted(state.parameters)}, the model has {sorted(named)}",
            field="checkpoint",
        )
