"""The plain types of a dataset pass: many Train steps over an uploaded dataset named in one
message (DatasetPass), and its packed answer (PassResult). docs/datasets.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from gradserve.types import FINGERPRINT_OMITTED_AT_DEFAULT, Reduction, StepResult, TrainResult


@dataclass(frozen=True)
class DatasetPass:
    """Consecutive steps of `batch_size` samples (the last one takes what is left) over the
    samples `indices` in that order, or when they are empty [start, start + count), each one
    batch then an update with the same settings. `expected_version`: the version before the
    first step. `gradient_norms`: answer each step's norm (else the server skips computing
    it where nothing else needs it)."""

    dataset: str
    batch_size: int
    learning_rate: float
    indices: tuple[int, ...] = ()
    start: int = 0
    count: int = 0
    reduction: Reduction = Reduction.SUM
    hyperparameters: Mapping[str, float] = field(default_factory=dict)
    max_grad_norm: float | None = None
    expected_version: int | None = None
    gradient_norms: bool = False
    # Step i's batch draws its dropout masks from torch.manual_seed(seed + i); None: unseeded.
    seed: int | None = field(default=None, metadata={FINGERPRINT_OMITTED_AT_DEFAULT: True})

    def __post_init__(self) -> None:
        # Sorted by name, so that equal passes compare and fingerprint alike.
        if self.hyperparameters:
            ordered = dict(sorted(self.hyperparameters.items()))
            object.__setattr__(self, "hyperparameters", ordered)

    @property
    def samples(self) -> int:
        return len(self.indices) if self.indices else self.count

    @property
    def steps(self) -> int:
        """How many steps the pass makes (0 for a malformed batch size)."""
        return math.ceil(self.samples / self.batch_size) if self.batch_size > 0 else 0


@dataclass(frozen=True, slots=True)
class PassResult:
    """One entry per step: its loss; its gradient norm when asked; whether it clipped when
    the pass clips. `model_version`: after the last step."""

    losses: tuple[float, ...]
    model_version: int
    gradient_norms: tuple[float, ...] = ()
    clipped: tuple[bool, ...] = ()
    replayed: bool = False

    @classmethod
    def of(cls, result: TrainResult, *, norms: bool, clips: bool) -> PassResult:
        """The pass's answer from its steps' results: with `norms` each step's gradient
        norm, with `clips` (the pass clips) whether each step clipped."""
        steps = result.steps
        return cls(
            losses=tuple(step.losses[0] for step in steps),
            model_version=steps[-1].model_version if steps else 0,
            gradient_norms=tuple(step.gradient_norm for step in steps) if norms else (),
            clipped=tuple(step.clipped for step in steps) if clips else (),
            replayed=result.replayed,
        )

    def step_results(self) -> list[StepResult]:
        """As the equivalent Train steps' results (each one batch, each applied)."""
        first = self.model_version - len(self.losses) + 1
        norms = self.gradient_norms or (0.0,) * len(self.losses)
        clipped = self.clipped or (False,) * len(self.losses)
        return [
            StepResult((loss,), first + i, 0, True, 1, norms[i], clipped[i])
            for i, loss in enumerate(self.losses)
        ]
