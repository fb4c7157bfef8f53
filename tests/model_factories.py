"""Model factories for the --model-factory tests (imported by the server as trusted config)."""

from __future__ import annotations

from torch import nn

from gradserve.server.models.specs import FactoryModel


def tiny(hidden: str = "4") -> FactoryModel:
    width = int(hidden)
    module = nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 2))
    return FactoryModel(module, input_shape=(3,), output_shape=(2,))


def not_a_model() -> nn.Module:
    return nn.Linear(3, 2)


def classifier(loss: str = "cross_entropy") -> FactoryModel:
    # Names its own default loss: class-index targets without --loss.
    module = nn.Sequential(nn.Linear(3, 4))
    return FactoryModel(module, input_shape=(3,), output_shape=(4,), loss=loss)
