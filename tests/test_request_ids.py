"""request_id: a repeated id returns the first answer and changes nothing (AIP-155)."""

from __future__ import annotations

import torch
from helpers import Snapshot, apply, compute, linear_batch, set_parameters


def replayed(server, method: str) -> float:
    value = server.metrics.registry.get_sample_value(
        "gradserve_replayed_requests_total", {"grpc_method": method}
    )
    return value or 0.0


def test_repeated_compute_gradients_returns_the_first_answer(server, stub) -> None:
    batch = linear_batch(5)
    first = compute(stub, *batch, request_id="batch-1", return_gradients=True)
    before = Snapshot.take(server, stub)
    # The same request again (a retry): the first call's answer, nothing accumulated.
    again = compute(stub, *batch, request_id="batch-1", return_gradients=True)
    assert again == first
    Snapshot.take(server, stub).assert_same(before)
    assert before.accumulated_batches == 1
    assert replayed(server, "ComputeGradients") == 1


def test_repeated_apply_update_returns_the_first_answer(server, stub) -> None:
    compute(stub, *linear_batch(5))
    first = apply(stub, 0.1, request_id="step-1")
    compute(stub, *linear_batch(5))
    before = Snapshot.take(server, stub)
    again = apply(stub, 0.1, request_id="step-1")
    assert again == first
    assert first.model_version == 1
    Snapshot.take(server, stub).assert_same(before)
    assert before.accumulated_batches == 1
    assert replayed(server, "ApplyUpdate") == 1


def test_repeated_set_parameters_changes_nothing(server, stub) -> None:
    first = set_parameters(stub, {"w": torch.tensor([1.5])}, request_id="set-1")
    compute(stub, *linear_batch(5))
    before = Snapshot.take(server, stub)
    again = set_parameters(stub, {"w": torch.tensor([1.5])}, request_id="set-1")
    assert again == first
    Snapshot.take(server, stub).assert_same(before)
    assert before.parameters["w"].item() == 1.5
    assert replayed(server, "SetParameters") == 1


def test_the_window_evicts_the_oldest_id(make_server, make_stub) -> None:
    server = make_server(request_id_window=2)
    stub = make_stub(server)
    batch = linear_batch(4)
    for request_id in ("a", "b", "c"):
        compute(stub, *batch, request_id=request_id)
    assert compute(stub, *batch, request_id="c").accumulated_batches == 3  # still remembered
    assert compute(stub, *batch, request_id="a").accumulated_batches == 4  # evicted: runs again
    assert server.store.info().accumulated_batches == 4
    assert replayed(server, "ComputeGradients") == 1


def test_the_same_id_on_two_methods_is_two_requests(server, stub) -> None:
    batch = linear_batch(4)
    compute(stub, *batch, request_id="same")
    update = apply(stub, 0.1, request_id="same")
    assert (update.model_version, update.applied_batches) == (1, 1)
    assert set_parameters(stub, {"b": torch.zeros(1)}, request_id="same").model_version == 2
    assert compute(stub, *batch, request_id="same").model_version == 0  # replayed
    assert server.store.version == 2
    assert replayed(server, "ComputeGradients") == 1
    assert replayed(server, "ApplyUpdate") == 0


def test_calls_without_an_id_are_never_replayed(server, stub) -> None:
    batch = linear_batch(4)
    assert compute(stub, *batch).accumulated_batches == 1
    assert compute(stub, *batch).accumulated_batches == 2
    assert replayed(server, "ComputeGradients") == 0
