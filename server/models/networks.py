"""The registry's networks beyond the seed's line: an MLP with dropout and batch norm, a small CNN.

Plain torch modules built from parsed options; parsing and naming live in model_specs.py.
Dropout draws from the server process's global torch RNG (torch.manual_seed seeds it).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
from torch import nn

from gradserve.errors import InvalidArgumentError


def _check_training_batch(module: nn.Module, inputs: torch.Tensor) -> None:
    # torch raises a bare ValueError for this, which would travel as INTERNAL.
    if module.training and inputs.shape[0] < 2:
        raise InvalidArgumentError(
            "inputs.shape: batch norm needs at least 2 samples in a training batch",
            field="inputs.shape",
        )


class BatchNorm1d(nn.BatchNorm1d):
    """nn.BatchNorm1d that rejects a one-sample training batch as a bad request."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        _check_training_batch(self, inputs)
        return super().forward(inputs)


class BatchNorm2d(nn.BatchNorm2d):
    """nn.BatchNorm2d that rejects a training batch with one value per channel."""

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.shape[2] * inputs.shape[3] == 1:
            _check_training_batch(self, inputs)
        return super().forward(inputs)


def build_mlp(
    sizes: Sequence[int],
    activation: Callable[[], nn.Module],
    *,
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> nn.Sequential:
    """Linear layers; after each hidden one: [batch norm], activation, [dropout]."""
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(fan_in, fan_out))
        if index == len(sizes) - 2:
            break
        if batch_norm:
            layers.append(BatchNorm1d(fan_out))
        layers.append(activation())
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def build_cnn(
    input_shape: tuple[int, int, int],
    outputs: int,
    channels: Sequence[int],
    activation: Callable[[], nn.Module],
    *,
    dropout: float = 0.0,
    batch_norm: bool = False,
) -> nn.Sequential:
    """Per entry of `channels`: 3x3 conv (same padding), [batch norm], activation, 2x2 max pool
    while the image is at least 2x2; then flatten, [dropout], one linear layer to `outputs`."""
    in_channels, height, width = input_shape
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        if batch_norm:
            layers.append(BatchNorm2d(out_channels))
        layers.append(activation())
        if height >= 2 and width >= 2:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
        in_channels = out_channels
    layers.append(nn.Flatten())
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(in_channels * height * width, outputs))
    return nn.Sequential(*layers)
