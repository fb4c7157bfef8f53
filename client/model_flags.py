"""The trainer's flags for bringing a model: --model-factory (embedded server) and --step-seeds."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_factory_and_seed_flags(add: Callable[..., Any]) -> None:
    add(
        "--model-factory",
        dest="model_factories",
        action="append",
        default=[],
        metavar="NAME=MODULE:FUNCTION",
        help="register a trusted nn.Module factory as model NAME on the embedded server, "
        "imported from the current folder as `python -m` would (repeatable; "
        "examples/custom_model/)",
    )
    add(
        "--step-seeds",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="every step carries a seed derived from --seed, so the server's dropout masks are "
        "reproducible (docs/randomness.md); --no-step-seeds for a server with --nproc",
    )
