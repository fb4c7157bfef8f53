"""Request-id windows: one per RPC, bounded in bytes, and a reused id must carry the same payload."""

from __future__ import annotations

import dataclasses

import grpc
import pytest
import torch
from helpers import (
    TIMEOUT,
    Snapshot,
    apply,
    compute,
    field_violations,
    linear_batch,
    set_parameters,
)

from gradserve.codec import tensor_to_proto
from gradserve.server.checkpoints.encoding import decode_state, encode_state
from gradserve.server.store.request_ids import RequestIdWindow, fingerprint
from gradserve.types import GradientResult, UpdateResult
from gradserve.v1 import gradserve_pb2 as pb

BATCH = linear_batch(4, torch.Generator().manual_seed(3))
OTHER = linear_batch(4, torch.Generator().manual_seed(4))


def refused(call, code: grpc.StatusCode) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    assert caught.value.code() == code, caught.value.details()
    assert field_violations(caught.value) == ["request_id"]
    return caught.value


def train_request(batch, learning_rate: float, request_id: str) -> pb.TrainRequest:
    inputs, targets = batch
    step = pb.TrainStep(
        batches=[pb.Batch(inputs=tensor_to_proto(inputs), targets=tensor_to_proto(targets))],
        apply_update=True,
        learning_rate=learning_rate,
    )
    return pb.TrainRequest(steps=[step], request_id=request_id)


@pytest.mark.parametrize("method", ["compute", "apply", "set", "train"])
def test_a_reused_id_with_another_payload_is_refused_and_changes_nothing(
    server, stub, method
) -> None:
    first, second = {
        "compute": (lambda: compute(stub, *BATCH, request_id="r"),
                    lambda: compute(stub, *OTHER, request_id="r")),
        "apply": (lambda: apply(stub, 0.1, request_id="r"),
                  lambda: apply(stub, 0.2, request_id="r")),
        "set": (lambda: set_parameters(stub, {"w": torch.tensor([1.5])}, request_id="r"),
                lambda: set_parameters(stub, {"w": torch.tensor([2.5])}, request_id="r")),
        "train": (lambda: list(stub.Train(iter([train_request(BATCH, 0.1, "r")]), timeout=TIMEOUT)),
                  lambda: list(stub.Train(iter([train_request(BATCH, 0.3, "r")]), timeout=TIMEOUT))),
    }[method]  # fmt: skip
    compute(stub, *BATCH)
    answer = first()
    compute(stub, *BATCH)
    before = Snapshot.take(server, stub)
    error = refused(second, grpc.StatusCode.INVALID_ARGUMENT)
    assert "different payload" in error.details()
    Snapshot.take(server, stub).assert_same(before)
    assert first() == answer  # the real retry is still answered from the window


def test_cheap_calls_do_not_push_an_update_out_of_the_window(make_server, make_stub) -> None:
    server = make_server(request_id_window=4)
    stub = make_stub(server)
    compute(stub, *BATCH)
    update = apply(stub, 0.1, request_id="step-1")
    for index in range(8):
        compute(stub, *BATCH, request_id=f"batch-{index}")
    # The update retried after many more ComputeGradients: still answered, not applied again.
    assert apply(stub, 0.1, request_id="step-1") == update
    assert server.store.version == 1
    assert server.store.info().accumulated_batches == 8


def test_async_retry_of_an_accepted_batch_is_replayed_not_aborted(make_server, make_stub) -> None:
    server = make_server(mode="async", max_staleness=0, stale_policy="reject")
    stub = make_stub(server)
    first = compute(stub, *BATCH, request_id="c", based_on_version=0)
    apply(stub, 0.1)
    # Now version 1: a new batch based on 0 is too stale, but this one was accepted already.
    again = compute(stub, *BATCH, request_id="c", based_on_version=0)
    assert again == first
    assert server.store.info().accumulated_batches == 0
    with pytest.raises(grpc.RpcError) as caught:
        compute(stub, *BATCH, request_id="new", based_on_version=0)
    assert caught.value.code() == grpc.StatusCode.ABORTED


def test_sync_rounds_refuse_a_reused_id_with_another_learning_rate(make_server, make_stub) -> None:
    server = make_server(mode="sync", sync_contributions=1)
    stub = make_stub(server)
    compute(stub, *BATCH)
    first = apply(stub, 0.1, request_id="round")
    refused(lambda: apply(stub, 0.7, request_id="round"), grpc.StatusCode.INVALID_ARGUMENT)
    assert apply(stub, 0.1, request_id="round") == first
    assert server.store.version == 1


def test_results_past_the_byte_budget_are_dropped_and_their_replay_refused(
    make_server, make_stub
) -> None:
    # The linear model's gradients are 8 bytes: a budget of 16 keeps the last two.
    server = make_server(request_id_window_bytes=16)
    stub = make_stub(server)
    answers = [compute(stub, *BATCH, request_id=i, return_gradients=True) for i in "abc"]
    before = Snapshot.take(server, stub)
    error = refused(
        lambda: compute(stub, *BATCH, request_id="a", return_gradients=True),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert "no longer kept" in error.details()
    Snapshot.take(server, stub).assert_same(before)
    assert compute(stub, *BATCH, request_id="b", return_gradients=True) == answers[1]
    assert compute(stub, *BATCH, request_id="c", return_gradients=True) == answers[2]


def test_the_window_holds_at_most_its_byte_budget() -> None:
    window = RequestIdWindow(capacity=1200, max_bytes=64 * 1024)
    gradients = {"w": torch.zeros(256)}  # 1 KiB each
    for index in range(1200):
        result = GradientResult(0.0, 1, 1, 1, 0, gradients={"w": gradients["w"].clone()})
        window.put("compute_gradients", str(index), result, "x")
    assert window.held_bytes("compute_gradients") <= 64 * 1024
    assert len(window) == 1200  # every id is still known: none of them runs twice
    kept = [entry for _, _, entry in window.items() if entry.result is not None]
    assert len(kept) == 64


def test_trimmed_entries_and_fingerprints_survive_a_checkpoint(make_server, make_stub, tmp_path):
    first = make_server(checkpoint_dir=str(tmp_path), request_id_window_bytes=8)
    stub = make_stub(first)
    compute(stub, *BATCH, request_id="a", return_gradients=True)
    compute(stub, *BATCH, request_id="b", return_gradients=True)
    first.stop(0)
    second = make_server(checkpoint_dir=str(tmp_path), request_id_window_bytes=8)
    stub = make_stub(second)
    refused(
        lambda: compute(stub, *BATCH, request_id="a", return_gradients=True),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    refused(
        lambda: compute(stub, *OTHER, request_id="b", return_gradients=True),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert compute(stub, *BATCH, request_id="b", return_gradients=True).accumulated_batches == 2


def test_checkpoints_without_fingerprints_still_load(server) -> None:
    state = server.store.export_state()
    update = UpdateResult(1, 1, 4, 0.5)
    state = dataclasses.replace(state, request_ids=(("apply_update", "u", update, "f"),))
    data, manifest = encode_state(state, model_spec="linear", optimizer="sgd")
    # A checkpoint from before fingerprints: format 1 (no manifest digest), 3-field entries.
    manifest["request_ids"] = [entry[:3] for entry in manifest["request_ids"]]
    manifest["format_version"] = 1
    del manifest["manifest_sha256"]
    restored = decode_state(data, manifest)
    assert restored.request_ids == (("apply_update", "u", update, ""),)
    server.store.restore_state(restored)
    # Without a fingerprint any payload replays, as before fingerprints existed.
    assert server.store.apply_update(0.9, request_id="u").replayed


def test_fingerprints_tell_payloads_apart_and_are_cheap() -> None:
    x, y = BATCH
    assert fingerprint(x, y, False) == fingerprint(x.clone(), y.clone(), False)
    assert fingerprint(x, y, False) != fingerprint(x, y, True)
    assert fingerprint(x, y, False) != fingerprint(x.double(), y, False)
    assert fingerprint(x.reshape(2, 2), y, False) != fingerprint(x.reshape(4, 1), y, False)
    assert fingerprint(torch.tensor(1.0, dtype=torch.bfloat16)) != fingerprint(torch.tensor(2.0))
