"""How a request's steps run under the lock: optimistically, else one by one, in parts cut at
the checkpoint cadence (--checkpoint-every-updates counted inside a request).

The background checkpointer sees the version between requests only, so a 100-step request
with N = 10 used to leave one checkpoint. With a cadence set (checkpoints/files.py sets it on
the store), the steps run in parts that end at each update reaching a multiple of N, and the
state there is copied (under the store's lock, already held) and handed to `save`; the state
at the request's end is left to the background thread, as a one-step request's always was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from gradserve.types import StepResult, TrainResult, TrainStep

from .error_scope import scoped
from .store_state import StoreState

Cadence = tuple[int, Callable[[StoreState], object]]


@dataclass(frozen=True)
class StepRunner:
    """What running steps needs of the store (parameter_store.py builds one per request)."""

    # All of a part's steps at once; None when they need the checked path (optimistic_runs.py).
    optimistic: Callable[[Sequence[TrainStep], Sequence[list[int]]], TrainResult | None] | None
    one_step: Callable[[TrainStep, list[int]], StepResult]
    version: Callable[[], int]
    state_copy: Callable[[], StoreState]


def run_steps(
    steps: Sequence[TrainStep],
    sizes: Sequence[list[int]],
    where: str,
    note: str,
    runner: StepRunner,
    *,
    cadence: Cadence | None,
) -> TrainResult:
    """Step i named `{where}[i]` in its error with `note` (formatted with index and count). A
    part that raises stops the request there, as one step that raises does."""

    def run(part: range) -> list[StepResult]:
        if runner.optimistic is not None:
            chosen = slice(part.start, part.stop)
            result = runner.optimistic(steps[chosen], sizes[chosen])
            if result is not None:
                return list(result.steps)
        results = []
        for index in part:
            with scoped(f"{where}[{index}]", note=note.format(index=index, count=len(steps))):
                results.append(runner.one_step(steps[index], sizes[index]))
        return results

    if cadence is None:
        return TrainResult(tuple(run(range(len(steps)))))
    every, save = cadence
    results: list[StepResult] = []
    start, expected = 0, runner.version()
    for index, step in enumerate(steps):
        expected += step.apply_update
        if (step.apply_update and expected % every == 0) or index == len(steps) - 1:
            results.extend(run(range(start, index + 1)))
            start = index + 1
            # The request's last state stays for the background thread to see and save
            # (one step per request costs nothing more than before); the ones inside it
            # would be gone by then.
            last = index == len(steps) - 1
            if step.apply_update and runner.version() % every == 0 and not last:
                save(runner.state_copy())
    return TrainResult(tuple(results))
