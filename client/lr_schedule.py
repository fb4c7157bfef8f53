"""--lr-schedule: the learning rate of each step, as torch.optim.lr_scheduler computes it.

The values come from torch's own scheduler, stepped once per optimizer step over a stand-in
optimizer, so step s carries bitwise the rate a local loop with the same scheduler uses at
step s (the recursive forms of StepLR and CosineAnnealingLR round differently from any closed
form). The protocol carries a rate per step (ApplyUpdate, each TrainStep); the server keeps no
schedule, so a resumed run asks for step s again and gets the same value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LR_SCHEDULE_HELP = (
    "learning rate per step, as torch.optim.lr_scheduler gives it, stepped once per update: "
    "constant; step:STEP_SIZE[:GAMMA] (StepLR, gamma 0.1); cosine[:T_MAX[:ETA_MIN]] "
    "(CosineAnnealingLR, T_MAX: the run's steps); warmup:ITERS[:START_FACTOR] (LinearLR to "
    "the base rate, start factor 1/3)"
)

KINDS = ("constant", "step", "cosine", "warmup")


@dataclass(frozen=True)
class LrScheduleSpec:
    kind: str
    # The numbers after the kind, as given (the rest take torch's defaults).
    arguments: tuple[float, ...] = ()


def parse_lr_schedule(text: str) -> LrScheduleSpec:
    """`kind[:a[:b]]`; ValueError naming what is wrong."""
    kind, *rest = text.strip().split(":")
    if kind not in KINDS:
        raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(KINDS)}")
    most = {"constant": 0, "step": 2, "cosine": 2, "warmup": 2}[kind]
    if len(rest) > most:
        raise ValueError(f"{kind} takes at most {most} numbers, got {len(rest)}")
    try:
        numbers = tuple(float(item) for item in rest)
    except ValueError:
        raise ValueError(f"{text!r}: the numbers after {kind} must be numbers") from None
    if kind == "step" and not numbers:
        raise ValueError("step needs STEP_SIZE (step:STEP_SIZE[:GAMMA])")
    if kind == "warmup" and not numbers:
        raise ValueError("warmup needs ITERS (warmup:ITERS[:START_FACTOR])")
    if kind in ("step", "warmup") and (numbers[0] < 1 or not numbers[0].is_integer()):
        raise ValueError(f"{kind}: {numbers[0]:g} must be a whole number >= 1")
    if kind == "cosine" and numbers and (numbers[0] < 1 or not numbers[0].is_integer()):
        raise ValueError(f"cosine: T_MAX {numbers[0]:g} must be a whole number >= 1")
    if kind == "warmup" and len(numbers) > 1 and not 0 < numbers[1] <= 1:
        raise ValueError(f"warmup: START_FACTOR {numbers[1]:g} must be in (0, 1]")
    return LrScheduleSpec(kind, numbers)


class LearningRates:
    """The rate at step s of a run. A run asks for its steps in order; a resumed one asks for
    an earlier step again, and the scheduler is then replayed from step 0 (nothing is kept
    per step, so a run of any length costs the same memory)."""

    def __init__(self, text: str, base: float, total_steps: int | None) -> None:
        self.spec = parse_lr_schedule(text)
        self.base = base
        if self.spec.kind == "cosine" and not self.spec.arguments and total_steps is None:
            raise ValueError(
                "--lr-schedule cosine needs T_MAX when the run's length is not known ahead "
                "(a streamed CSV): cosine:T_MAX"
            )
        self.total_steps = total_steps
        self._step = 0
        self._optimizer: torch.optim.Optimizer | None = None
        self._scheduler: torch.optim.lr_scheduler.LRScheduler | None = None

    def at(self, step: int) -> float:
        if self.spec.kind == "constant":
            return self.base
        if self._optimizer is None or self._scheduler is None or step < self._step:
            self._optimizer, self._scheduler = self._make()
            self._step = 0
        while self._step < step:
            # An optimizer step first (a no-op: no gradients), as in a training loop; torch
            # warns about a scheduler stepped before its optimizer.
            self._optimizer.step()
            self._scheduler.step()
            self._step += 1
        rate: float = self._optimizer.param_groups[0]["lr"]
        return rate

    def _make(self) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        stand_in = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.SGD([stand_in], lr=self.base)
        numbers = self.spec.arguments
        schedulers = torch.optim.lr_scheduler
        scheduler: torch.optim.lr_scheduler.LRScheduler
        if self.spec.kind == "step":
            gamma = numbers[1] if len(numbers) > 1 else 0.1
            scheduler = schedulers.StepLR(optimizer, step_size=int(numbers[0]), gamma=gamma)
        elif self.spec.kind == "cosine":
            t_max = int(numbers[0]) if numbers else max(int(self.total_steps or 1), 1)
            eta_min = numbers[1] if len(numbers) > 1 else 0.0
            scheduler = schedulers.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=eta_min)
        else:
            start = numbers[1] if len(numbers) > 1 else 1.0 / 3
            scheduler = schedulers.LinearLR(
                optimizer, start_factor=start, total_iters=int(numbers[0])
            )
        return optimizer, scheduler
