"""Budgets before memory: a run's bytes are known from its spec and reserved before its model
is built; refused specs allocate nothing, concurrent creates and loads cannot pass the budget."""

from __future__ import annotations

import resource
import threading
from pathlib import Path

import grpc
import model_factories
import pytest
from helpers import field_violations

from gradserve.defaults import channel_options
from gradserve.server.models.specs import MAX_MODEL_ELEMENTS, build, measure
from gradserve.v1 import gradserve_pb2 as pb
from gradserve.v1 import gradserve_pb2_grpc as pb_grpc

TIMEOUT = 60
MIB = 1024 * 1024
# 784*256 + 256 + 256*10 + 10 float32: 814,120 bytes.
MLP = "mlp:784-256-10"
MLP_BYTES = 814_120
THREADS = 12
GATED = ("gated=model_factories:gated",)


def stub_of(server) -> tuple[grpc.Channel, pb_grpc.GradientServiceStub]:  # type: ignore[no-untyped-def]
    channel = grpc.insecure_channel(server.address, options=channel_options())
    return channel, pb_grpc.GradientServiceStub(channel)


def create(stub: pb_grpc.GradientServiceStub, run: str, model: str) -> pb.CreateRunResponse:
    return stub.CreateRun(pb.CreateRunRequest(run=run, model=model), timeout=TIMEOUT)


def test_a_spec_is_sized_without_allocating_it() -> None:
    assert measure(MLP).bytes == MLP_BYTES
    assert (
        measure("mlp:1000000-1000000-1").elements == 1_000_000 * 1_000_000 + 1_000_000 + 1_000_001
    )
    with pytest.raises(Exception) as caught:  # the grammar's bound, before any allocation
        build("mlp:1000000-1000000-1")
    assert "at most" in str(caught.value) and str(MAX_MODEL_ELEMENTS) in str(caught.value)


def test_a_4_tb_spec_is_resource_exhausted_naming_the_budget(make_server) -> None:
    server = make_server()
    channel, stub = stub_of(server)
    with channel, pytest.raises(grpc.RpcError) as caught:
        create(stub, "huge", "mlp:1000000-1000000-1")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert field_violations(caught.value) == ["max_run_parameter_bytes"]


def test_an_800_mb_spec_under_a_50_mb_budget_allocates_nothing(make_server) -> None:
    server = make_server(max_run_parameter_bytes=50 * MIB)
    channel, stub = stub_of(server)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with channel:
        for attempt in range(3):
            with pytest.raises(grpc.RpcError) as caught:
                create(stub, f"big-{attempt}", "mlp:100000-2000-1")
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert field_violations(caught.value) == ["max_run_parameter_bytes"]
        assert [r.run for r in stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT).runs] == [""]
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown < 200 * 1024, f"peak memory grew by {grown} KiB around refused creates"


def test_a_refused_create_never_builds_the_model(make_server) -> None:
    model_factories.BUILT_ON.clear()
    server = make_server(
        max_run_parameter_bytes=100,
        model_factories=("recorded=model_factories:recorded",),
    )
    channel, stub = stub_of(server)
    with channel, pytest.raises(grpc.RpcError) as caught:
        create(stub, "wide", "recorded:width=1000")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert model_factories.BUILT_ON == ["meta"]  # sized, never built


def test_concurrent_creates_cannot_pass_the_budget(make_server, tmp_path: Path) -> None:
    # Each real build of a `gated` model waits until every create has an answer or is in
    # its build: a refusal must come while the admitted runs are still being built, so
    # the budget counts runs under construction, not only registered ones.
    fits, size = 3, measure("gated:width=1000", factories=GATED).bytes
    model_factories.GATE[:] = [threading.Barrier(THREADS)]
    server = make_server(
        max_run_parameter_bytes=fits * size + 64,
        checkpoint_dir=str(tmp_path),
        model_factories=GATED,
    )
    outcomes: list[grpc.StatusCode] = []
    start = threading.Barrier(THREADS)

    def create_one(index: int) -> None:
        channel, stub = stub_of(server)
        with channel:
            start.wait()
            try:
                create(stub, f"r{index}", "gated:width=1000")
                outcomes.append(grpc.StatusCode.OK)
            except grpc.RpcError as error:
                outcomes.append(error.code())
                model_factories.GATE[0].wait(timeout=model_factories.GATE_SECONDS)

    threads = [threading.Thread(target=create_one, args=(i,)) for i in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        model_factories.GATE.clear()
    assert outcomes.count(grpc.StatusCode.OK) == fits, outcomes
    assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == THREADS - fits
    channel, stub = stub_of(server)
    with channel:
        runs = stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT).runs
    assert sum(r.parameter_bytes for r in runs if r.loaded) <= fits * size + 64


def test_a_run_found_on_disk_is_measured_before_it_loads(make_server, tmp_path: Path) -> None:
    first = make_server(checkpoint_dir=str(tmp_path))
    channel, stub = stub_of(first)
    with channel:
        create(stub, "kept", MLP)
    first.stop(0)
    # Room for one such run: "other" takes it, so "kept" may not load beside it.
    second = make_server(checkpoint_dir=str(tmp_path), max_run_parameter_bytes=MLP_BYTES + 64)
    channel, stub = stub_of(second)
    with channel:
        create(stub, "other", MLP)
        with pytest.raises(grpc.RpcError) as caught:
            stub.GetModelInfo(pb.GetModelInfoRequest(run="kept"), timeout=TIMEOUT)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert field_violations(caught.value) == ["max_run_parameter_bytes"]
        stub.DeleteRun(pb.DeleteRunRequest(run="other"), timeout=TIMEOUT)
        # The refused load held nothing back: with the room free again it loads.
        assert stub.GetModelInfo(pb.GetModelInfoRequest(run="kept"), timeout=TIMEOUT).model == "mlp"
