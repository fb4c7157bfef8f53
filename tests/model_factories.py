"""Model factories for the --model-factory tests (imported by the server as trusted config)."""

from __future__ import annotations

import threading

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


# Where each `recorded` model was built: "meta" when it was only sized (server/models/specs.py).
BUILT_ON: list[str] = []


def recorded(width: str = "4") -> FactoryModel:
    """A factory that notes the device of every model it builds."""
    module = nn.Sequential(nn.Linear(3, int(width)), nn.Tanh(), nn.Linear(int(width), 2))
    BUILT_ON.append(next(module.parameters()).device.type)
    return FactoryModel(module, input_shape=(3,), output_shape=(2,))


# Set by a test: real builds of `gated` wait here (sizing on the meta device does not).
GATE: list[threading.Barrier] = []


def gated(width: str = "4") -> FactoryModel:
    """A factory whose real builds wait at GATE[0], so a test can hold builds in progress."""
    module = nn.Sequential(nn.Linear(3, int(width)), nn.Tanh(), nn.Linear(int(width), 2))
    if GATE and next(module.parameters()).device.type != "meta":
        GATE[0].wait(timeout=GATE_SECONDS)
    return FactoryModel(module, input_shape=(3,), output_shape=(2,))


GATE_SECONDS = 60.0  # a bound against a hang in a broken build, never reached when it works
