"""Forks: CreateRun from a checkpoint of a run the caller may read. With the optimizer's state
the fork continues bitwise as its parent; without it, as local torch with a fresh optimizer."""

from __future__ import annotations

import grpc
import torch
from helpers import run_folder
from test_named_checkpoints import batch, digest, parameters, refused, save, step

from gradserve.client.security import bearer_metadata
from gradserve.v1 import gradserve_pb2 as pb

TIMEOUT = 30
MOMENTUM = "sgd:momentum=0.9"


def create(stub, run: str, metadata=(), **fields) -> pb.CreateRunResponse:  # type: ignore[no-untyped-def]
    return stub.CreateRun(
        pb.CreateRunRequest(run=run, **fields), timeout=TIMEOUT, metadata=metadata
    )


def parent_with_a_checkpoint(stub) -> pb.SaveCheckpointResponse:  # type: ignore[no-untyped-def]
    create(stub, "parent", model="linear", optimizer=MOMENTUM, seed=3)
    for seed in range(3):
        step(stub, seed, "parent")
    return save(stub, "base", "parent")


def test_a_fork_with_optimizer_state_continues_bitwise_as_its_parent(
    make_server, make_stub, tmp_path
) -> None:
    stub = make_stub(make_server(checkpoint_dir=str(tmp_path)))
    saved = parent_with_a_checkpoint(stub)
    forked = create(stub, "child", from_checkpoint="parent/base", with_optimizer_state=True)
    assert forked.info.model_version == 3 and forked.info.optimizer.startswith("sgd")
    assert digest(stub, "child").digest == saved.digest
    for seed in range(10, 14):
        step(stub, seed, "parent")
        step(stub, seed, "child")
    parent, child = parameters(stub, "parent"), parameters(stub, "child")
    assert all(torch.equal(parent[name], child[name]) for name in parent)
    assert digest(stub, "child") == digest(stub, "parent")
    # Saved at once: the fork's own directory holds it, so a restart brings it back forked.
    assert any(p.name.endswith("-v3") for p in run_folder(tmp_path, "child").iterdir())


def test_a_fork_without_optimizer_state_trains_as_torch_with_a_fresh_optimizer(
    make_server, make_stub, tmp_path
) -> None:
    stub = make_stub(make_server(checkpoint_dir=str(tmp_path)))
    parent_with_a_checkpoint(stub)
    start = parameters(stub, "parent")
    create(stub, "fresh", from_checkpoint="parent/base")
    w, b = (start[name].clone().requires_grad_() for name in ("w", "b"))
    optimizer = torch.optim.SGD([w, b], lr=0.05, momentum=0.9)
    for seed in range(10, 14):
        step(stub, seed, "parent")
        step(stub, seed, "fresh")
        x, y = batch(seed)
        ((w * x + b - y) ** 2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    fresh, parent = parameters(stub, "fresh"), parameters(stub, "parent")
    assert torch.equal(fresh["w"], w.detach()) and torch.equal(fresh["b"], b.detach())
    assert not torch.equal(fresh["w"], parent["w"])


def test_forking_the_default_run(make_server, make_stub, tmp_path) -> None:
    stub = make_stub(make_server(checkpoint_dir=str(tmp_path), optimizer="adam"))
    step(stub, 0)
    saved = save(stub, "root-base")
    create(stub, "copy", from_checkpoint="/root-base", with_optimizer_state=True)
    assert digest(stub, "copy").digest == saved.digest
    step(stub, 1)
    step(stub, 1, "copy")
    assert digest(stub, "copy") == digest(stub)


def test_refused_forks_create_nothing(make_server, make_stub, tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("alice alice-token-4f1e\nbob bob-token-9a2c\n")
    server = make_server(checkpoint_dir=str(tmp_path / "ckpt"), auth_tokens_file=str(tokens))
    stub = make_stub(server)
    alice, bob = (tuple(bearer_metadata(t)) for t in ("alice-token-4f1e", "bob-token-9a2c"))
    create(stub, "parent", alice, model="linear", optimizer=MOMENTUM)
    stub.SaveCheckpoint(pb.SaveCheckpointRequest(run="parent", name="base"), timeout=TIMEOUT,
                        metadata=alice)  # fmt: skip
    cases = {
        ("parent/base", "", bob): grpc.StatusCode.NOT_FOUND,  # not bob's to read
        ("parent/none", "", alice): grpc.StatusCode.NOT_FOUND,
        ("nobody/base", "", alice): grpc.StatusCode.NOT_FOUND,
        ("parent-base", "", alice): grpc.StatusCode.INVALID_ARGUMENT,
        ("parent/base", "mlp:1-4-1", alice): grpc.StatusCode.INVALID_ARGUMENT,
    }
    for (source, model, metadata), code in cases.items():
        error = refused(lambda: create(stub, "fork", metadata, from_checkpoint=source, model=model))
        assert error.code() == code, (source, error.details())
    error = refused(
        lambda: create(stub, "fork", alice, from_checkpoint="parent/base", optimizer="adam")
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "optimizer" in error.details()
    runs = stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT, metadata=alice).runs
    assert [run.run for run in runs if run.run] == ["parent"]
    # Given fields that are the source's are accepted.
    create(stub, "fork", alice, from_checkpoint="parent/base", model="linear", optimizer=MOMENTUM)


def test_optimizer_state_needs_a_source(server, stub) -> None:
    error = refused(lambda: create(stub, "plain", model="linear", with_optimizer_state=True))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "with_optimizer_state" in error.details()


def test_a_fork_comes_back_forked_after_a_restart(make_server, make_stub, tmp_path) -> None:
    first = make_server(checkpoint_dir=str(tmp_path))
    stub = make_stub(first)
    saved = parent_with_a_checkpoint(stub)
    create(stub, "child", from_checkpoint="parent/base", with_optimizer_state=True)
    first.stop(0)
    again = make_stub(make_server(checkpoint_dir=str(tmp_path)))
    assert digest(again, "child").digest == saved.digest
    assert digest(again, "child").model_version == 3
