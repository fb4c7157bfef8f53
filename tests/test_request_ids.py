"""request_id: a repeated id returns the first answer and changes nothing (AIP-155)."""

from __future__ import annotations

import torch
from helpers import Snapshot, apply, compute, linear_batch, set_parameters

from gradserve.server.store import request_ids
from gradserve.server.store.request_ids import fingerprint
from gradserve.types import BatchLoss, Reduction


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


def test_fingerprints_are_the_digests_checkpoints_keep() -> None:
    # Checkpoints store each remembered request's fingerprint: these digests were made by the
    # first implementation, and a restarted server must make the same ones for the same payload.
    x = torch.arange(10, dtype=torch.float32).reshape(10, 1)
    y = x * 2
    pinned = {
        "e561171ad8a4442478b6622a7282336d": (x, y, False),
        "dce089230ab0cb419d0d568278833184": (0.01, Reduction.SUM, None, {}, None),
        "12f777b32191e07ccc5ca811d8622c55": ((x, [y.double(), 3]), "s", True, b"b"),
        "7f5055c89a9e9489e36ce3a8dc91c1a4": (x.to(torch.bfloat16), x.t()),
        "ff562d6dea7cae0e8d00a6163759b29e": (torch.empty(0, 3),),
        "fa84ad6ea969f21ae23f6dc459e4a749": (BatchLoss(sample_weights=x.reshape(-1)),),
    }
    for _ in range(2):  # the second time from the cached headers and reprs
        for digest, parts in pinned.items():
            assert fingerprint(*parts) == digest
    assert fingerprint(x.requires_grad_(True), y, False) == "e561171ad8a4442478b6622a7282336d"
    # A client sending ever new shapes cannot grow the header table without bound.
    for rows in range(1, 3 * request_ids._MAX_CACHED):
        fingerprint(torch.zeros(rows))
    assert len(request_ids._HEADERS) <= request_ids._MAX_CACHED
