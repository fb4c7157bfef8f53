"""An adapter run's bytes (its adapter and its optimizer's state) count against
--max-run-parameter-bytes, sized from the base's module shapes before any tensor is made."""

from __future__ import annotations

import resource
from pathlib import Path

import grpc
import pytest
from helpers import TIMEOUT, field_violations
from llm_bases import tiny_llama

from gradserve.v1 import gradserve_pb2 as pb

MIB = 1 << 20
# tiny_llama: hidden 32, two key-value heads of 8: q_proj 32 -> 32, v_proj 32 -> 16, 2 layers.
ADAPTER_BYTES_PER_RANK = 2 * ((32 + 32) + (32 + 16)) * 4
# AdamW keeps exp_avg and exp_avg_sq of each adapter tensor.
ADAMW_RUN_BYTES_PER_RANK = 3 * ADAPTER_BYTES_PER_RANK


def _create(stub, run: str, rank: int, optimizer: str = "adamw", base: str = "tiny"):  # type: ignore[no-untyped-def]
    targets = ["q_proj", "v_proj"] if base == "tiny" else []
    return stub.CreateRun(
        pb.CreateRunRequest(
            run=run,
            base_model=base,
            lora=pb.LoraSpec(rank=rank, alpha=8, target_modules=targets),
            optimizer=optimizer,
        ),
        timeout=TIMEOUT,
    )


def _runs(stub) -> list[str]:  # type: ignore[no-untyped-def]
    return [r.run for r in stub.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT).runs]


def test_adapter_and_adam_bytes_are_reserved_and_held_against_the_budget(
    make_server, make_stub, tmp_path: Path
) -> None:
    folder = tiny_llama(tmp_path / "base")
    # The default run's own bytes (the "linear" model), then a budget with room for exactly
    # one rank-4 AdamW adapter run beside it.
    probe = make_stub(make_server())
    default_bytes = probe.ListRuns(pb.ListRunsRequest(), timeout=TIMEOUT).runs[0].parameter_bytes
    budget = default_bytes + 4 * ADAMW_RUN_BYTES_PER_RANK
    stub = make_stub(make_server(base_models=(f"tiny={folder}",), max_run_parameter_bytes=budget))
    with pytest.raises(grpc.RpcError) as caught:
        _create(stub, "too-big", rank=8)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert field_violations(caught.value) == ["max_run_parameter_bytes"]
    assert f"{8 * ADAMW_RUN_BYTES_PER_RANK} more bytes" in (caught.value.details() or "")
    assert _runs(stub) == [""]  # nothing changed
    info = _create(stub, "fits", rank=4).info
    assert info.parameter_count * 4 == 4 * ADAPTER_BYTES_PER_RANK
    # Loaded, it holds its Adam state's bytes too: a rank-1 run no longer fits (it would beside
    # the adapter's bytes alone).
    with pytest.raises(grpc.RpcError) as caught:
        _create(stub, "one-more", rank=1)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"({budget} held)" in (caught.value.details() or "")
    assert _runs(stub) == ["", "fits"]


def test_a_refused_adapter_is_sized_without_being_made(make_server, make_stub) -> None:
    # A registry base whose rank-1024 all-linear adapter is 25 MB (75 MB with Adam's state).
    stub = make_stub(
        make_server(base_models=("wide=mlp:2048-2048-10",), max_run_parameter_bytes=MIB)
    )
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    for attempt in range(3):
        with pytest.raises(grpc.RpcError) as caught:
            _create(stub, f"wide-{attempt}", rank=1024, base="wide")
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        expected = 3 * 1024 * ((2048 + 2048) + (2048 + 10)) * 4
        assert f"{expected} more bytes" in (caught.value.details() or "")
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown < 10 * 1024, f"peak memory grew by {grown} KiB around refused creates"
    assert _runs(stub) == [""]


def test_the_optimizer_state_counted_per_parameter_follows_the_spec() -> None:
    from gradserve.server.models.optimizers import state_slots  # noqa: PLC0415

    assert state_slots("sgd") == 0
    assert state_slots("sgd:momentum=0.9") == 1
    assert state_slots("sgd:weight_decay=0.1") == 0
    assert state_slots("sgd;group=*lora_B*:momentum=0.5") == 1
    assert state_slots("adamw") == state_slots("adam:betas=0.8/0.9") == 2
    assert state_slots("adamw:amsgrad=true") == 3
