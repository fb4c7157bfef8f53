"""--lr-schedule: the trainer's parameters bitwise those of a local loop stepping torch's own
scheduler (torch.optim.lr_scheduler) after each optimizer step, over either transport."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import torch

from gradserve.client.lr_schedule import LearningRates
from gradserve.client.train import main as train_main

Scheduler = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]
EPOCHS, SAMPLES, BATCH = 3, 100, 10
STEPS = EPOCHS * SAMPLES // BATCH

SCHEDULES: dict[str, Scheduler] = {
    "step:7:0.5": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5),
    "step:4": lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4),
    "cosine": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=STEPS),
    "cosine:12:0.001": lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
        o, T_max=12, eta_min=0.001
    ),
    "warmup:5": lambda o: torch.optim.lr_scheduler.LinearLR(o, total_iters=5),
    "warmup:8:0.1": lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=8),
}

OPTIMIZERS: dict[str, Callable[[list[torch.Tensor], float], torch.optim.Optimizer]] = {
    "sgd:momentum=0.9": lambda p, lr: torch.optim.SGD(p, lr=lr, momentum=0.9),
    "adam": lambda p, lr: torch.optim.Adam(p, lr=lr),
}


def local_run(optimizer: str, schedule: Scheduler, lr: float) -> dict[str, torch.Tensor]:
    """The seed tutorial's data and w, b, trained by torch.optim with the scheduler stepped
    after every optimizer step."""
    torch.manual_seed(0)
    x = torch.rand(SAMPLES, 1)
    y = 2 * x + 1 + 0.1 * torch.randn(SAMPLES, 1)
    w = torch.randn(1, requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    local = OPTIMIZERS[optimizer]([w, b], lr)
    scheduler = schedule(local)
    for _ in range(EPOCHS):
        for i in range(0, SAMPLES, BATCH):
            loss = ((w * x[i : i + BATCH] + b - y[i : i + BATCH]) ** 2).mean()
            local.zero_grad()
            loss.backward()
            local.step()
            scheduler.step()
    return {"w": w.detach(), "b": b.detach()}


def trained(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, torch.Tensor]:
    code = train_main(
        ["--epochs", str(EPOCHS), "--metrics-port", "0", "--json", "--progress", "never", *args]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    parameters = json.loads(out.strip().splitlines()[-1])["parameters"]
    return {name: torch.tensor(value, dtype=torch.float32) for name, value in parameters.items()}


@pytest.mark.parametrize("text", list(SCHEDULES))
def test_values_are_the_schedulers_in_any_order(text: str) -> None:
    rates = LearningRates(text, 0.05, STEPS)
    stand_in = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.05)
    scheduler = SCHEDULES[text](stand_in)
    expected = []
    for _ in range(STEPS):
        expected.append(stand_in.param_groups[0]["lr"])
        stand_in.step()
        scheduler.step()
    # A resumed run asks for a later step first, then earlier ones again.
    assert rates.at(STEPS - 1) == expected[-1]
    assert [rates.at(step) for step in range(STEPS)] == expected
    assert len(set(expected)) > 1


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("text", list(SCHEDULES))
def test_trainer_is_bitwise_the_local_scheduler(
    capsys: pytest.CaptureFixture[str], optimizer: str, text: str
) -> None:
    lr = 0.05
    remote = trained(capsys, "--optimizer", optimizer, "--lr", str(lr), "--lr-schedule", text)
    local = local_run(optimizer, SCHEDULES[text], lr)
    for name in ("w", "b"):
        assert torch.equal(remote[name], local[name]), (name, text, remote, local)


@pytest.mark.parametrize("transport", ["unary", "stream"])
@pytest.mark.parametrize("data_on_server", ["on", "off"])
def test_both_transports_and_dataset_passes_agree(
    capsys: pytest.CaptureFixture[str], transport: str, data_on_server: str
) -> None:
    optimizer, text = "sgd:momentum=0.9", "cosine:12:0.001"
    remote = trained(
        capsys,
        "--optimizer",
        optimizer,
        "--lr",
        "0.05",
        "--lr-schedule",
        text,
        "--transport",
        transport,
        "--data-on-server",
        data_on_server,
        "--steps-per-request",
        "4",
    )
    local = local_run(optimizer, SCHEDULES[text], 0.05)
    assert all(torch.equal(remote[name], local[name]) for name in ("w", "b"))


def test_constant_is_the_learning_rate_itself(capsys: pytest.CaptureFixture[str]) -> None:
    # The oracle of the constant schedule is the learning rate without any scheduler.
    remote = trained(capsys, "--optimizer", "adam", "--lr", "0.05")
    local = local_run("adam", lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda _: 1.0), 0.05)
    assert all(torch.equal(remote[name], local[name]) for name in ("w", "b"))
