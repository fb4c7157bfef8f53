"""The weights a Sample call draws from: a copy of the run's current ones, or of a checkpoint's.

A named checkpoint is read (and checked against the run's layout) from the run's own folder,
then loaded into a copy of the run's module taken under its lock: the run itself, its
version, optimizer and accumulated gradients are left as they are. Checkpoints are found
only in the run's own folder, so another principal's checkpoint is NOT_FOUND like a missing
one (the run itself is resolved per principal before this is reached).
"""

from __future__ import annotations

import torch
from torch import nn

from gradserve.errors import NotFoundError

from ..store.buffers import model_buffers
from ..store.parameter_store import ParameterStore
from .checks import ModelLayout
from .files import Checkpointer, read_for_load
from .names import find

FIELD = "checkpoint"


def weights_for_sampling(
    store: ParameterStore, checkpointer: Checkpointer | None, checkpoint: str
) -> tuple[int, nn.Module]:
    """(the version drawn from, a module of its own): the run's current weights when
    `checkpoint` is empty, else those of the run's checkpoint of that name."""
    if not checkpoint:
        return store.copy_for_sampling()
    if checkpointer is None:
        raise NotFoundError(
            f"{FIELD}: no checkpoint {checkpoint[:80]!r} (this server keeps none: no "
            "--checkpoint-dir)",
            field=FIELD,
        )
    folder = find(checkpointer.directory, checkpoint, FIELD)
    state = read_for_load(folder.path, ModelLayout.of(store), FIELD)
    _, module = store.copy_for_sampling()
    buffers = model_buffers(module)
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            parameter.copy_(state.parameters[name])
        for name, value in state.buffers.items():
            buffers[name].copy_(value)
    return state.version, module
