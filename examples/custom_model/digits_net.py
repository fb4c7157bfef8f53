"""A model factory for gradserve: a small CNN with dropout for 8x8 digit images.

`gradserve-server --model-factory digitsnet=digits_net:build --model digitsnet:dropout=0.2`
imports this module from the current folder and calls `build(dropout="0.2")`: the options of
the model spec arrive as strings. The factory returns a FactoryModel, which says everything the
server needs to serve the module:

- `module`: any torch.nn.Module; the server owns it (its parameters are the run's parameters,
  named as `module.named_parameters()` names them).
- `input_shape`, `input_dtype`: one sample's inputs, without the batch dimension; every batch
  is checked against it (GetModelInfo's `input`).
- `output_shape`: one sample's outputs. With a class-index loss (cross_entropy, nll) it is
  (number of classes,) and the targets are int64 class indices; otherwise targets are floats
  shaped like the outputs (GetModelInfo's `target`).
- `loss`: the loss used when the server's --loss (or CreateRun's loss) names none; a request
  may still choose another per batch (docs/losses.md).

The server seeds torch with --seed (or CreateRun's seed) right before calling `build`, so the
initial parameters are reproducible.
"""

from __future__ import annotations

import torch
from torch import nn

from gradserve.server.models.specs import FactoryModel


def build(channels: str = "8", dropout: str = "0.1") -> FactoryModel:
    width = int(channels)
    module = nn.Sequential(
        nn.Conv2d(1, width, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Flatten(),
        nn.Dropout(float(dropout)),
        nn.Linear(width * 4 * 4, 10),
    )
    return FactoryModel(
        module,
        input_shape=(1, 8, 8),
        output_shape=(10,),
        input_dtype=torch.float32,
        loss="cross_entropy",
    )
