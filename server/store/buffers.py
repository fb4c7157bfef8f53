"""A model's buffers (batch norm's running statistics and batch counts): which they are, keeping
them through a rejected batch, and the smallest training batch batch norm accepts.

Buffers are model state beside the parameters: a training-mode forward pass changes them
before the loss or the gradients can be checked, so the store copies them first and puts the
copy back when the batch is refused; checkpoints carry them (store_state.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext

import torch
from torch import nn

from gradserve.errors import InvalidArgumentError

from ..models.model import Model

_NOTHING_TO_KEEP = nullcontext()


def model_buffers(module: nn.Module) -> dict[str, torch.Tensor]:
    """The buffers a state_dict holds (persistent ones), by their state_dict names. Batch norm
    updates them in place, so these tensors stay the live ones."""
    persistent = set(module.state_dict())
    return {name: buffer for name, buffer in module.named_buffers() if name in persistent}


class BufferKeeper:
    """Puts the buffers back as they were when the work inside `kept()` raises. The copies
    live in tensors allocated once; a model without buffers pays nothing."""

    def __init__(self, buffers: Mapping[str, torch.Tensor]) -> None:
        self._buffers = list(buffers.values())
        self._copies = [torch.empty_like(buffer) for buffer in self._buffers]

    def kept(self) -> AbstractContextManager[None]:
        # A generator-based context costs ~2 us to enter and leave: none without buffers.
        return self._kept() if self._buffers else _NOTHING_TO_KEEP

    @contextmanager
    def _kept(self) -> Iterator[None]:
        with torch.no_grad():
            torch._foreach_copy_(self._copies, self._buffers)
        try:
            yield
        except BaseException:
            with torch.no_grad():
                torch._foreach_copy_(self._buffers, self._copies)
            raise


def smallest_training_batch(model: Model) -> int:
    """2 when one sample would give some batch-norm layer one value per channel (torch
    refuses to train on that), else 1. Found by one eval-mode forward pass of one zero sample
    with hooks on the batch-norm layers: eval mode changes no buffer and draws no randomness.
    Call before the model serves (it switches the mode and back)."""
    layers = [m for m in model.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers:
        return 1
    values: list[int] = []

    def record(_: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        values.append(math.prod(inputs[0].shape[2:]))

    hooks = [layer.register_forward_pre_hook(record) for layer in layers]
    was_training = model.module.training
    parameter = next(model.module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    sample = torch.zeros((1, *model.input.sample_shape), dtype=model.input.dtype, device=device)
    try:
        model.module.eval()
        with torch.no_grad():
            model.module(sample)
    except Exception:  # a model that refuses the probe keeps only the in-call check
        return 1
    finally:
        model.module.train(was_training)
        for hook in hooks:
            hook.remove()
    return 2 if any(value == 1 for value in values) else 1


def check_training_batch(batch_size: int, smallest: int) -> None:
    if batch_size < smallest:
        raise InvalidArgumentError(
            "inputs.shape: batch norm needs at least 2 samples in a training batch",
            field="inputs.shape",
        )


def check_buffer_state(
    buffers: Mapping[str, torch.Tensor], saved: Mapping[str, torch.Tensor]
) -> None:
    """A checkpoint's buffers, when it has any (older ones have none), are exactly the
    model's, with their dtypes and shapes."""
    if not saved:
        return
    for name, value in saved.items():
        buffer = buffers.get(name)
        if buffer is None or value.shape != buffer.shape or value.dtype != buffer.dtype:
            raise InvalidArgumentError(
                f"checkpoint: buffer {name!r} {value.dtype} {list(value.shape)} does not "
                "match the model",
                field="checkpoint",
            )
    if set(saved) != set(buffers):
        raise InvalidArgumentError(
            f"checkpoint: buffers {sorted(saved)}, the model has {sorted(buffers)}",
            field="checkpoint",
        )
