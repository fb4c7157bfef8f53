"""Checkpoints: a restarted server continues bitwise where the old one stopped; broken ones are
skipped; SaveCheckpoint writes one on demand."""

from __future__ import annotations

import json
import logging

import grpc
import pytest
import torch
from helpers import TIMEOUT, linear_batch

from gradserve.client.gradient_client import GradientClient
from gradserve.server.checkpoints.files import MANIFEST, TENSORS, list_checkpoints
from gradserve.types import TrainStep
from gradserve.v1 import gradserve_pb2 as pb

OPTIMIZERS = ["sgd", "sgd:momentum=0.9,nesterov=true", "adam:betas=0.8/0.9", "adamw"]


def run_steps(client: GradientClient, steps: range, generator_seed: int = 7) -> None:
    generator = torch.Generator().manual_seed(generator_seed)
    batches = [linear_batch(5, generator) for _ in range(max(steps.stop, 1))]
    for step in steps:
        x, y = batches[step]
        client.compute_gradients(x, y, request_id=f"c{step}")
        client.apply_update(0.05, request_id=f"u{step}", expected_version=step)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_restart_from_checkpoint_continues_bitwise(make_server, tmp_path, optimizer) -> None:
    reference = make_server(optimizer=optimizer)
    with GradientClient(reference.address) as client:
        run_steps(client, range(8))
        # A batch accumulated but not applied is part of the state too.
        client.compute_gradients(*linear_batch(3, torch.Generator().manual_seed(1)))
        expected = client.get_parameters()
        expected_gradients = reference.store.gradients()

    first = make_server(optimizer=optimizer, checkpoint_dir=str(tmp_path))
    with GradientClient(first.address) as client:
        run_steps(client, range(4))
    first.stop(0)  # saves on the way down
    second = make_server(optimizer=optimizer, checkpoint_dir=str(tmp_path))
    with GradientClient(second.address) as client:
        assert client.model_info().model_version == 4
        run_steps(client, range(4, 8))
        response = client.compute_gradients(*linear_batch(3, torch.Generator().manual_seed(1)))
        assert response.accumulated_batches == 1
    second.stop(0)
    third = make_server(optimizer=optimizer, checkpoint_dir=str(tmp_path))
    with GradientClient(third.address) as client:
        info = client.model_info()
        assert (info.model_version, info.accumulated_batches) == (8, 1)
        version, parameters = client.get_parameters()
    assert version == expected[0]
    for name, value in expected[1].items():
        assert torch.equal(parameters[name], value), name
    for name, gradient in third.store.gradients().items():
        assert torch.equal(gradient, expected_gradients[name]), name


def test_request_ids_survive_a_restart(make_server, tmp_path) -> None:
    first = make_server(checkpoint_dir=str(tmp_path))
    with GradientClient(first.address) as client:
        run_steps(client, range(2))
    first.stop(0)
    second = make_server(checkpoint_dir=str(tmp_path))
    with GradientClient(second.address) as client:
        # The last update retried: answered from the window, not applied again.
        result = client.apply_update(0.05, request_id="u1", expected_version=1)
        assert result.model_version == 2
        assert client.model_info().model_version == 2
    assert second.metrics.replayed.labels("ApplyUpdate")._value.get() == 1


def save(stub) -> pb.SaveCheckpointResponse:
    return stub.SaveCheckpoint(pb.SaveCheckpointRequest(), timeout=TIMEOUT)


@pytest.mark.parametrize(
    "damage",
    ["truncate_tensors", "flip_tensor_byte", "truncate_manifest", "delete_tensors"],
)
def test_a_broken_newest_checkpoint_is_skipped(
    make_server, make_stub, tmp_path, caplog, damage
) -> None:
    server = make_server(checkpoint_dir=str(tmp_path), checkpoint_keep=5)
    stub = make_stub(server)
    with GradientClient(server.address) as client:
        run_steps(client, range(3))
        good = save(stub)
        expected = client.get_parameters()
        run_steps(client, range(3, 5))
        newest = save(stub)
    assert (good.model_version, newest.model_version) == (3, 5)
    server.stop(0)
    # stop() saved a third; the damaged one must be the newest, so drop that one.
    for _, path in list_checkpoints(tmp_path):
        if path.name not in (good.name, newest.name):
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
    broken = tmp_path / newest.name
    if damage == "truncate_tensors":
        data = (broken / TENSORS).read_bytes()
        (broken / TENSORS).write_bytes(data[: len(data) // 2])
    elif damage == "flip_tensor_byte":
        data = bytearray((broken / TENSORS).read_bytes())
        data[-1] ^= 0x01
        (broken / TENSORS).write_bytes(bytes(data))
    elif damage == "truncate_manifest":
        text = (broken / MANIFEST).read_text()
        (broken / MANIFEST).write_text(text[: len(text) // 2])
    else:
        (broken / TENSORS).unlink()

    with caplog.at_level(logging.WARNING, logger="gradserve.server.checkpoints.files"):
        restarted = make_server(checkpoint_dir=str(tmp_path))
    assert any(
        newest.name in r.getMessage() and "skipping" in r.getMessage() for r in caplog.records
    )
    with GradientClient(restarted.address) as client:
        assert client.model_info().model_version == 3
        version, parameters = client.get_parameters()
    assert version == expected[0]
    for name, value in expected[1].items():
        assert torch.equal(parameters[name], value), name


def test_checkpoint_files_are_safetensors_and_json(make_server, make_stub, tmp_path) -> None:
    server = make_server(checkpoint_dir=str(tmp_path), optimizer="adam")
    with GradientClient(server.address) as client:
        run_steps(client, range(2))
    saved = save(make_stub(server))
    folder = tmp_path / saved.name
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, TENSORS]
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["model_version"] == 2
    assert manifest["format_version"] == 2
    # safetensors: an 8-byte little-endian header length, then a JSON header.
    data = (folder / TENSORS).read_bytes()
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
    assert {"parameters.w", "parameters.b"} <= set(header)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_keep_bounds_the_number_of_checkpoints(make_server, make_stub, tmp_path) -> None:
    server = make_server(checkpoint_dir=str(tmp_path), checkpoint_keep=2)
    stub = make_stub(server)
    names = [save(stub).name for _ in range(4)]
    assert [p.name for _, p in list_checkpoints(tmp_path)] == names[-2:]


def test_save_checkpoint_without_a_directory_is_failed_precondition(server, stub) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        save(stub)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_a_checkpoint_of_another_model_is_refused(make_server, tmp_path) -> None:
    make_server(checkpoint_dir=str(tmp_path)).stop(0)
    with pytest.raises(Exception, match="checkpoint"):
        make_server(checkpoint_dir=str(tmp_path), optimizer="adam")


def test_stopping_writes_no_second_checkpoint_of_an_unchanged_state(
    make_server, make_stub, tmp_path
) -> None:
    server = make_server(checkpoint_dir=str(tmp_path))
    x, y = linear_batch(5, torch.Generator().manual_seed(1))
    with GradientClient(server.address) as client:
        client.compute_gradients(x, y)
        client.apply_update(0.05)
    saved = save(make_stub(server)).name  # as a periodic save would, just before SIGTERM
    server.stop(0)
    assert [p.name for _, p in list_checkpoints(tmp_path)] == [saved]
    # A restart that changes nothing and stops again adds nothing either.
    make_server(checkpoint_dir=str(tmp_path)).stop(0)
    assert [p.name for _, p in list_checkpoints(tmp_path)] == [saved]
    # Gradients accumulated since are state: the final checkpoint keeps them.
    again = make_server(checkpoint_dir=str(tmp_path))
    with GradientClient(again.address) as client:
        client.compute_gradients(x, y)
    again.stop(0)
    assert len(list_checkpoints(tmp_path)) == 2


def test_checkpoint_cadence_counts_updates_inside_one_train_request(make_server, tmp_path) -> None:
    # One Train request of 35 steps with an update each, saved every 10 updates: checkpoints
    # at versions 10, 20 and 30 are written inside the request, not once per request (its
    # end, v35, is the background thread's, as after any request).
    server = make_server(
        checkpoint_dir=str(tmp_path), checkpoint_every_updates=10, checkpoint_keep=10
    )
    plain = make_server()
    generator = torch.Generator().manual_seed(3)
    steps = [
        TrainStep((linear_batch(5, generator),), apply_update=True, learning_rate=0.05)
        for _ in range(35)
    ]
    for running in (server, plain):
        with GradientClient(running.address) as client:
            (answer,) = client.train_stream([steps])
            assert [step.model_version for step in answer] == list(range(1, 36))
    versions = {int(p.name.rpartition("-v")[2]) for _, p in list_checkpoints(tmp_path)}
    assert {10, 20, 30} <= versions, versions
    # Cut at the cadence, the request trains bitwise as in one piece.
    with GradientClient(server.address) as one, GradientClient(plain.address) as other:
        for name, value in one.get_parameters()[1].items():
            assert torch.equal(value, other.get_parameters()[1][name]), name
