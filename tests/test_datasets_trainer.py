"""Datasets on the server, the trainer's side: `--data-on-server` trains bitwise as inline
batches and as the seed's local loop (streamed and unary, shuffled and not), uploads only what
fits, and after a server restart uploads again and still ends bitwise."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from helpers import TIMEOUT
from test_resume import ServerProcess, version_of
from test_train_cli import seed_loop
from test_train_cli import train as cli_train

from gradserve.client.config import ScheduleConfig, TrainConfig, TransportConfig
from gradserve.client.data import Dataset, seed_data
from gradserve.client.gradient_client import GradientClient, RetryPolicy
from gradserve.client.loop import train
from gradserve.client.metrics import TrainMetrics
from gradserve.client.recorder import Recorder
from gradserve.client.server_data import upload_training_set
from gradserve.client.session import make_plan, make_transport


def seed_training(
    address: str, *, on_server: bool, kind: str, shuffle: bool
) -> dict[str, torch.Tensor]:
    """The seed run (100 samples, batch 10, lr 0.01, 100 epochs) from the tutorial's w, b."""
    config = TrainConfig(
        schedule=ScheduleConfig(epochs=100, batch_size=10, learning_rate=0.01, shuffle=shuffle),
        transport=TransportConfig(kind=kind),
    )
    seed = seed_data(0)
    with GradientClient(address, timeout=TIMEOUT) as client:
        name = None
        if on_server:
            name = "seed"
            client.upload_dataset(name, seed.dataset.inputs, seed.dataset.targets)
        train(
            client,
            make_plan(config, seed.dataset, name),
            make_transport(client, config),
            Recorder(TrainMetrics("test", "linear")),
            initial={"w": seed.initial_w, "b": seed.initial_b},
        )
        return client.get_parameters()[1]


@pytest.mark.parametrize("kind", ["stream", "unary"])
@pytest.mark.parametrize("shuffle", [False, True])
def test_named_batches_train_bitwise_as_inline_and_the_local_loop(
    make_server, kind: str, shuffle: bool
) -> None:
    named = seed_training(make_server().address, on_server=True, kind=kind, shuffle=shuffle)
    inline = seed_training(make_server().address, on_server=False, kind=kind, shuffle=shuffle)
    local = seed_loop(shuffle=shuffle)
    for name in ("w", "b"):
        assert torch.equal(named[name], inline[name]), name
    assert torch.equal(named["w"], local.w.detach()) and torch.equal(named["b"], local.b.detach())


def test_auto_uploads_what_fits_and_on_says_why_it_cannot(make_server) -> None:
    server = make_server(max_dataset_bytes=1000)
    seed = seed_data(0).dataset
    with GradientClient(server.address, timeout=TIMEOUT) as client:
        info = client.model_info()
        assert upload_training_set(client, "off", info, seed) is None
        uploaded = upload_training_set(client, "auto", info, seed)
        assert uploaded is not None and client.list_datasets()[0][0].name == uploaded.name
        big = Dataset(torch.rand(1000, 1), torch.rand(1000, 1))
        assert upload_training_set(client, "auto", client.model_info(), big) is None
        with pytest.raises(ValueError, match="--data-on-server on, but the training data's"):
            upload_training_set(client, "on", client.model_info(), big)


@pytest.mark.slow
def test_a_restarted_server_gets_the_data_again_and_training_ends_bitwise(
    make_server, tmp_path
) -> None:
    """Datasets are in memory only: after kill -9 and a restart from the checkpoint the
    trainer's named batches find no dataset (NOT_FOUND, DATASET_NOT_FOUND); it uploads the
    data again, re-syncs on the server's version and ends where an uninterrupted run does."""
    config = TrainConfig(
        schedule=ScheduleConfig(epochs=30, batch_size=10, learning_rate=0.01, shuffle=True),
        transport=TransportConfig(kind="stream", steps_per_request=5, window=2),
    )
    seed = seed_data(0)
    initial = {"w": seed.initial_w, "b": seed.initial_b}

    def run(address: str, uploads: list[int]) -> dict[str, torch.Tensor]:
        retry = RetryPolicy(max_attempts=40, max_backoff=0.5)
        with GradientClient(address, timeout=10.0, retry=retry) as client:
            server_data = upload_training_set(client, "on", client.model_info(), seed.dataset)
            assert server_data is not None

            def upload() -> None:
                uploads.append(1)
                server_data.upload()

            train(
                client,
                make_plan(config, seed.dataset, server_data.name),
                make_transport(client, config),
                Recorder(TrainMetrics("test", "linear")),
                initial=initial,
                upload=upload,
            )
            return client.get_parameters()[1]

    expected = run(make_server().address, [])
    server = ServerProcess(tmp_path / "checkpoints", tmp_path / "server.log")
    server.start()
    uploads: list[int] = []
    outcome: dict[str, object] = {}

    def in_thread() -> None:
        try:
            outcome["result"] = run(server.address, uploads)
        except BaseException as error:
            outcome["error"] = error

    trainer = threading.Thread(target=in_thread)
    try:
        trainer.start()
        deadline = time.monotonic() + 60
        while (version_of(server.address) or 0) < 120:
            assert trainer.is_alive(), outcome
            assert time.monotonic() < deadline, "training stuck"
            time.sleep(0.005)  # polling another process's progress
        server.kill()
        server.start()
        trainer.join(timeout=120)
        assert not trainer.is_alive(), "training did not finish"
    finally:
        server.stop()
    assert "error" not in outcome, outcome.get("error")
    assert uploads, "the trainer never uploaded again"
    parameters = outcome["result"]
    for name, value in expected.items():
        assert torch.equal(parameters[name], value), name  # type: ignore[index]


def test_the_trainer_deletes_the_data_it_uploaded_unless_told_to_keep_it(make_server) -> None:
    # Kept with --keep-datasets: so the trainer did upload it in auto mode, and deleted it.
    for mode, keep, kept in (("auto", (), 0), ("auto", ("--keep-datasets",), 1), ("off", (), 0)):
        server = make_server()
        run = cli_train("--server", server.address, "--json", "--epochs", "3",
                        "--data-on-server", mode, *keep)  # fmt: skip
        assert run.returncode == 0, run.stderr
        with GradientClient(server.address, timeout=TIMEOUT) as client:
            assert len(client.list_datasets()[0]) == kept, mode
    full = make_server(max_dataset_bytes=100)
    run = cli_train("--server", full.address, "--epochs", "1", "--data-on-server", "on")
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "gradserve-train: data: --data-on-server on, but the training data's 800 bytes are "
        "more than the server can take now (100)"
    ]
