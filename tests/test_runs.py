"""Training runs: created by clients, trained side by side bitwise as local torch, owned by
their principal, bounded by the run limits, unloaded when idle and loaded back exactly."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import grpc
import pytest
import torch
from helpers import field_violations

from gradserve.client.security import bearer_metadata
from gradserve.codec import tensor_from_proto, tensor_to_proto
from gradserve.defaults import channel_options
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

TIMEOUT = 30
ALICE, BOB, ROOT = "alice-token-4f1e", "bob-token-9a2c", "root-token-7d3b"


def stub_for(server, token: str | None = None):  # type: ignore[no-untyped-def]
    channel = grpc.insecure_channel(server.address, options=channel_options())
    metadata = bearer_metadata(token) if token else ()
    return channel, pb_grpc.GradientServiceStub(channel), tuple(metadata)


def batch(seed: int, size: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(size, 1, generator=generator)
    return x, 2 * x + 1 + 0.1 * torch.randn(size, 1, generator=generator)


def parameters(stub, run: str, metadata=()) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    response = stub.GetParameters(pb.GetParametersRequest(run=run), timeout=TIMEOUT,
                                  metadata=metadata)  # fmt: skip
    return {t.name: tensor_from_proto(t).clone() for t in response.parameters}


def step(stub, run: str, seed: int, lr: float, metadata=()) -> None:  # type: ignore[no-untyped-def]
    x, y = batch(seed)
    stub.ComputeGradients(
        pb.ComputeGradientsRequest(run=run, inputs=tensor_to_proto(x), targets=tensor_to_proto(y)),
        timeout=TIMEOUT, metadata=metadata,
    )  # fmt: skip
    stub.ApplyUpdate(pb.ApplyUpdateRequest(run=run, learning_rate=lr), timeout=TIMEOUT,
                     metadata=metadata)  # fmt: skip


def oracle(start: dict[str, torch.Tensor], seeds: range, lr: float) -> dict[str, torch.Tensor]:
    """The seed loop, locally: y_pred = w x + b, MSE, backward, w -= lr * w.grad."""
    w = start["w"].clone().requires_grad_()
    b = start["b"].clone().requires_grad_()
    for seed in seeds:
        x, y = batch(seed)
        loss = ((w * x + b - y) ** 2).mean()
        loss.backward()
        with torch.no_grad():
            w -= lr * w.grad  # type: ignore[operator]
            b -= lr * b.grad  # type: ignore[operator]
            w.grad.zero_()  # type: ignore[union-attr]
            b.grad.zero_()  # type: ignore[union-attr]
    return {"w": w.detach(), "b": b.detach()}


def create(stub, run: str, metadata=(), **fields) -> pb.CreateRunResponse:  # type: ignore[no-untyped-def]
    fields.setdefault("model", "linear")
    return stub.CreateRun(pb.CreateRunRequest(run=run, **fields), timeout=TIMEOUT,
                          metadata=metadata)  # fmt: skip


def test_two_runs_train_side_by_side_each_as_local_torch(make_server) -> None:
    server = make_server()
    channel, stub, _ = stub_for(server)
    with channel:
        for name, seed in (("alpha", 1), ("beta", 2)):
            created = create(stub, name, seed=seed)
            assert created.run == name and created.info.run == name
            assert created.info.model == "linear"
        starts = {name: parameters(stub, name) for name in ("alpha", "beta")}
        assert not torch.equal(starts["alpha"]["w"], starts["beta"]["w"])  # their own seeds

        def train(name: str, lr: float) -> None:
            for seed in range(20):
                step(stub, name, seed, lr)

        threads = [threading.Thread(target=train, args=a) for a in (("alpha", 0.1), ("beta", 0.05))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        for name, lr in (("alpha", 0.1), ("beta", 0.05)):
            expected = oracle(starts[name], range(20), lr)
            got = parameters(stub, name)
            for key in ("w", "b"):
                assert torch.equal(got[key], expected[key]), (name, key)
        # The default run was not touched, and each run has its own version.
        assert server.store.version == 0
        info = stub.GetModelInfo(pb.GetModelInfoRequest(run="alpha"), timeout=TIMEOUT)
        assert info.model_version == 20 and info.run == "alpha"
        listed = stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT)
        assert [r.run for r in listed.runs] == ["", "alpha", "beta"]


def test_names_are_checked_taken_names_refused_and_retries_answered(make_server) -> None:
    server = make_server()
    channel, stub, _ = stub_for(server)
    with channel:
        first = create(stub, "", request_id="create-1")
        assert first.run.startswith("run-")
        again = create(stub, "", request_id="create-1")
        assert again.run == first.run
        with pytest.raises(grpc.RpcError) as caught:
            create(stub, first.run)
        assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
        for bad in ("../etc", "a" * 65, "has space", "-leading"):
            with pytest.raises(grpc.RpcError) as caught:
                create(stub, bad)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert field_violations(caught.value) == ["run"]
        with pytest.raises(grpc.RpcError) as caught:
            create(stub, "nomodel", model="resnet:9")
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelInfo(pb.GetModelInfoRequest(run="missing"), timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        names = [r.run for r in stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT).runs]
        assert names == ["", first.run]  # the refused ones left nothing behind


def test_a_principal_cannot_see_or_touch_another_principals_run(make_server, tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE}\nbob {BOB}\nroot {ROOT} admin\n")
    server = make_server(auth_tokens_file=str(tokens))
    channel, stub, _ = stub_for(server)
    alice, bob, root = (tuple(bearer_metadata(t)) for t in (ALICE, BOB, ROOT))
    with channel:
        create(stub, "mine", alice)
        before = parameters(stub, "mine", alice)
        for call in (
            lambda: stub.GetModelInfo(pb.GetModelInfoRequest(run="mine"), timeout=TIMEOUT,
                                      metadata=bob),
            lambda: step(stub, "mine", 0, 0.1, bob),
            lambda: parameters(stub, "mine", bob),
            lambda: stub.SaveCheckpoint(pb.SaveCheckpointRequest(run="mine"), timeout=TIMEOUT,
                                        metadata=bob),
            lambda: stub.DeleteRun(pb.DeleteRunRequest(run="mine"), timeout=TIMEOUT,
                                   metadata=bob),
        ):  # fmt: skip
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.NOT_FOUND
            assert "mine" in (caught.value.details() or "")
        # Names are per principal: Bob's "mine" is his own run, and nothing tells him of Alice's.
        create(stub, "mine", bob, seed=7)
        assert not torch.equal(parameters(stub, "mine", bob)["w"], before["w"])
        for who in (alice, bob):
            assert [r.run for r in stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT,
                                                  metadata=who).runs] == ["", "mine"]  # fmt: skip
        for key, value in before.items():
            assert torch.equal(parameters(stub, "mine", alice)[key], value)
        # An admin sees and may use every run: two principals' "mine" need the owner named.
        with pytest.raises(grpc.RpcError) as caught:
            step(stub, "mine", 0, 0.1, root)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "gradserve-owner" in (caught.value.details() or "")
        step(stub, "mine", 0, 0.1, (*root, ("gradserve-owner", "alice")))
        assert stub.GetModelInfo(pb.GetModelInfoRequest(run="mine"), timeout=TIMEOUT,
                                 metadata=alice).model_version == 1  # fmt: skip
        assert stub.GetModelInfo(pb.GetModelInfoRequest(run="mine"), timeout=TIMEOUT,
                                 metadata=bob).model_version == 0  # fmt: skip
        # gradserve-owner from anyone but an admin changes nothing: Bob still reaches his own.
        assert stub.GetModelInfo(pb.GetModelInfoRequest(run="mine"), timeout=TIMEOUT,
                                 metadata=(*bob, ("gradserve-owner", "alice"))
                                 ).model_version == 0  # fmt: skip
        stub.DeleteRun(pb.DeleteRunRequest(run="mine"), timeout=TIMEOUT, metadata=alice)
        # One "mine" left: the admin's bare name reaches it again.
        assert stub.GetModelInfo(pb.GetModelInfoRequest(run="mine"), timeout=TIMEOUT,
                                 metadata=root).model_version == 0  # fmt: skip


def test_the_default_run_can_be_kept_for_admins(make_server, tmp_path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"alice {ALICE}\nroot {ROOT} admin\n")
    server = make_server(auth_tokens_file=str(tokens), default_run_access="admin")
    channel, stub, _ = stub_for(server)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT,
                              metadata=tuple(bearer_metadata(ALICE)))  # fmt: skip
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=TIMEOUT,
                                 metadata=tuple(bearer_metadata(ROOT)))  # fmt: skip
        assert info.model == "linear"


def test_run_limits_name_the_limit(make_server) -> None:
    server = make_server(max_runs=2)
    channel, stub, _ = stub_for(server)
    with channel:
        create(stub, "one")
        with pytest.raises(grpc.RpcError) as caught:
            create(stub, "two")
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert field_violations(caught.value) == ["max_runs"]
    # 784*256 + 256 + 256*10 + 10 floats: 814 KB of parameters, past a 100 KB budget.
    small = make_server(max_run_parameter_bytes=100_000)
    channel, stub, _ = stub_for(small)
    with channel:
        with pytest.raises(grpc.RpcError) as caught:
            create(stub, "big", model="mlp:784-256-10")
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert field_violations(caught.value) == ["max_run_parameter_bytes"]
        assert [r.run for r in stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT).runs] == [""]


def test_deleting_a_run_removes_it_and_its_metric_series(make_server) -> None:
    server = make_server()
    channel, stub, _ = stub_for(server)
    with channel:
        create(stub, "gone")
        step(stub, "gone", 0, 0.1)
        registry = server.metrics.registry
        assert registry.get_sample_value("gradserve_model_version", {"run": "gone"}) == 1
        stub.DeleteRun(pb.DeleteRunRequest(run="gone"), timeout=TIMEOUT)
        assert registry.get_sample_value("gradserve_model_version", {"run": "gone"}) is None
        assert registry.get_sample_value("gradserve_updates_total", {"run": "gone"}) is None
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelInfo(pb.GetModelInfoRequest(run="gone"), timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as caught:
            stub.DeleteRun(pb.DeleteRunRequest(run=""), timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_metadata_naming_another_run_is_refused(make_server) -> None:
    server = make_server()
    channel, stub, _ = stub_for(server)
    with channel:
        create(stub, "placed")
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelInfo(pb.GetModelInfoRequest(run="placed"), timeout=TIMEOUT,
                              metadata=(("gradserve-run", "elsewhere"),))  # fmt: skip
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert stub.GetModelInfo(pb.GetModelInfoRequest(run="placed"), timeout=TIMEOUT,
                                 metadata=(("gradserve-run", "placed"),)).run == "placed"  # fmt: skip
        # Creating and deleting are placed by the header too: a disagreeing one is refused.
        elsewhere = (("gradserve-run", "elsewhere"),)
        with pytest.raises(grpc.RpcError) as caught:
            create(stub, "misplaced", elsewhere)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as caught:
            stub.DeleteRun(pb.DeleteRunRequest(run="placed"), timeout=TIMEOUT, metadata=elsewhere)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        names = [r.run for r in stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT).runs]
        assert names == ["", "placed"]


def wait_until(condition, seconds: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_an_idle_run_is_unloaded_and_loaded_back_exactly(make_server, tmp_path: Path) -> None:
    server = make_server(checkpoint_dir=str(tmp_path), run_idle_seconds=0.2)
    channel, stub, _ = stub_for(server)
    with channel:
        create(stub, "sleepy", optimizer="sgd:momentum=0.9")
        start = parameters(stub, "sleepy")
        for seed in range(5):
            step(stub, "sleepy", seed, 0.1)

        def loaded() -> bool:
            runs = stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT).runs
            return next(r for r in runs if r.run == "sleepy").loaded

        wait_until(lambda: not loaded())
        for seed in range(5, 10):
            step(stub, "sleepy", seed, 0.1)
        assert loaded()
        # The same ten momentum steps in one process, locally.
        w = start["w"].clone().requires_grad_()
        b = start["b"].clone().requires_grad_()
        optimizer = torch.optim.SGD([w, b], lr=0.1, momentum=0.9)
        for seed in range(10):
            x, y = batch(seed)
            torch.nn.functional.mse_loss(w * x + b, y).backward()
            optimizer.step()
            optimizer.zero_grad()
        got = parameters(stub, "sleepy")
        assert torch.equal(got["w"], w.detach()) and torch.equal(got["b"], b.detach())


def test_runs_come_back_after_a_restart(make_server, tmp_path: Path) -> None:
    first = make_server(checkpoint_dir=str(tmp_path))
    channel, stub, _ = stub_for(first)
    with channel:
        create(stub, "kept", seed=3)
        for seed in range(3):
            step(stub, "kept", seed, 0.1)
        saved = parameters(stub, "kept")
    first.stop(0)
    second = make_server(checkpoint_dir=str(tmp_path))
    channel, stub, _ = stub_for(second)
    with channel:
        runs = {r.run: r for r in stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT).runs}
        assert set(runs) == {"", "kept"} and runs["kept"].model_version == 3
        restored = parameters(stub, "kept")
        for key, value in saved.items():
            assert torch.equal(restored[key], value)


def test_a_run_created_again_starts_fresh_beside_the_kept_checkpoints(
    make_server, tmp_path
) -> None:
    server = make_server(checkpoint_dir=str(tmp_path))
    channel, stub, _ = stub_for(server)
    with channel:
        create(stub, "again", seed=4)
        fresh = parameters(stub, "again")
        step(stub, "again", 0, 0.1)
        stub.SaveCheckpoint(pb.SaveCheckpointRequest(run="again"), timeout=TIMEOUT)
        stub.DeleteRun(pb.DeleteRunRequest(run="again"), timeout=TIMEOUT)
        create(stub, "again", seed=4)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(run="again"), timeout=TIMEOUT)
        assert info.model_version == 0
        for key, value in fresh.items():
            assert torch.equal(parameters(stub, "again")[key], value)
