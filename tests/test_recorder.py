"""The trainer's recorder across a re-sync past steps whose answers never came."""

from __future__ import annotations

import torch

from gradserve.client.metrics import TrainMetrics
from gradserve.client.plan import PlannedStep
from gradserve.client.recorder import Recorder
from gradserve.client.transport import StepDone
from gradserve.types import Reduction


def done(number: int, loss: float) -> StepDone:
    batch = (torch.zeros(2, 1), torch.zeros(2, 1))
    step = PlannedStep(number, 0, (batch,), 0.1, Reduction.SUM, closes_epoch=number == 4)
    return StepDone(step, (loss,), number + 1, 0.0)


def test_an_epoch_closes_without_the_losses_of_steps_a_crash_took_with_their_answers() -> None:
    # The server checkpointed step 2 before it crashed and its answer was lost: the re-sync
    # continues at step 3, and step 2's loss is unknown, not a KeyError at the epoch's end.
    recorder = Recorder(TrainMetrics("test", "linear"))
    for number, loss in ((0, 4.0), (1, 3.0), (3, 1.0), (4, 2.0)):
        recorder.step_done(done(number, loss))
    report = recorder.epoch_done(done(4, 2.0), None)
    assert report.mean_loss == 2.5 and report.last_loss == 2.0
    assert recorder.summary.batch_losses == [4.0, 3.0, 1.0, 2.0]
